#!/usr/bin/python3
"""A WHIP publisher built on GStreamer's webrtcbin (the WebRTC stack GStreamer-based WHIP
clients use), for tests/interop.rs (and by hand against a deployment): it proves a non-Ferry WebRTC implementation (libnice ICE,
OpenSSL DTLS with GStreamer's RSA certificate, libsrtp) can publish into Ferry.

Signaling is RFC 9725 done by hand: one POST of the complete offer (every candidate
gathered first, no trickle), 201 with the answer, DELETE of the session at the end.

Output, one line each on stdout (the test reads them): `answer <status> <location>`,
`state <ice|dtls|pc> <value>`, `done` or `failed <why>`. Exit 0 only when the peer
connection reached `connected` and stayed up for --seconds.
"""

import argparse
import sys
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

VIDEO = {
    "vp8": (
        "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1"
        " ! vp8enc deadline=1 keyframe-max-dist=60 target-bitrate=300000"
        " ! rtpvp8pay pt=96 mtu=1200"
        " ! application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000"
    ),
    "h264": (
        "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1"
        " ! x264enc tune=zerolatency speed-preset=ultrafast bitrate=300 key-int-max=60"
        " ! video/x-h264,profile=constrained-baseline"
        " ! rtph264pay pt=102 mtu=1200 config-interval=-1 aggregate-mode=zero-latency"
        " ! application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000"
    ),
}
AUDIO = (
    "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! opusenc"
    " ! rtpopuspay pt=111"
    " ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000"
)


def say(*words):
    print(*words, flush=True)


class Publisher:
    def __init__(self, args):
        self.args = args
        self.loop = GLib.MainLoop()
        self.location = None
        self.connected = False
        self.ok = False
        desc = "webrtcbin name=pc bundle-policy=max-bundle " + VIDEO[args.codec] + " ! pc. "
        if args.audio:
            desc += AUDIO + " ! pc. "
        self.pipe = Gst.parse_launch(desc)
        self.pc = self.pipe.get_by_name("pc")
        for i in range(2 if args.audio else 1):
            t = self.pc.emit("get-transceiver", i)
            if t is not None:
                t.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
        self.pc.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.pc.connect("notify::ice-gathering-state", self.on_gathering)
        for prop, tag in (
            ("ice-connection-state", "ice"),
            ("connection-state", "pc"),
        ):
            self.pc.connect("notify::" + prop, self.on_state, prop, tag)
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_error)
        self.offered = False

    def run(self):
        self.pipe.set_state(Gst.State.PLAYING)
        GLib.timeout_add_seconds(self.args.timeout, self.on_timeout)
        self.loop.run()
        self.pipe.set_state(Gst.State.NULL)
        self.delete()
        return 0 if self.ok else 1

    def fail(self, why):
        say("failed", why)
        self.loop.quit()

    def on_error(self, _bus, msg):
        err, dbg = msg.parse_error()
        self.fail("pipeline error: %s (%s)" % (err, dbg))

    def on_timeout(self):
        if not self.connected:
            self.fail("not connected within %ss" % self.args.timeout)
        return False

    def on_state(self, pc, _pspec, prop, tag):
        value = pc.get_property(prop).value_nick
        say("state", tag, value)
        if prop == "connection-state":
            if value == "connected" and not self.connected:
                self.connected = True
                GLib.timeout_add(int(self.args.seconds * 1000), self.on_done)
            elif value == "failed":
                self.fail("peer connection failed")

    def on_done(self):
        self.ok = True
        say("done")
        self.loop.quit()
        return False

    def on_negotiation_needed(self, pc):
        promise = Gst.Promise.new_with_change_func(self.on_offer, pc, None)
        pc.emit("create-offer", None, promise)

    def on_offer(self, promise, pc, _data):
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        pc.emit("set-local-description", offer, Gst.Promise.new())
        # The offer goes out once gathering completes (non-trickle): see on_gathering.
        self.on_gathering(pc, None)

    def on_gathering(self, pc, _pspec):
        done = GstWebRTC.WebRTCICEGatheringState.COMPLETE
        if self.offered or pc.get_property("ice-gathering-state") != done:
            return
        local = pc.get_property("local-description")
        if local is None:
            return
        self.offered = True
        if self.args.verbose:
            print(local.sdp.as_text(), file=sys.stderr)
        GLib.idle_add(self.post_offer, local.sdp.as_text())

    def post_offer(self, sdp):
        req = urllib.request.Request(self.args.url, data=sdp.encode(), method="POST")
        req.add_header("Content-Type", "application/sdp")
        req.add_header("Authorization", "Bearer " + self.args.token)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status = resp.status
                location = resp.headers.get("Location", "")
                answer = resp.read().decode()
        except urllib.error.HTTPError as e:
            self.fail("POST answered %s: %s" % (e.code, e.read().decode(errors="replace")))
            return False
        except OSError as e:
            self.fail("POST failed: %s" % e)
            return False
        self.location = urllib.parse.urljoin(self.args.url, location)
        say("answer", status, location)
        if self.args.verbose:
            print(answer, file=sys.stderr)
        res, msg = GstSdp.SDPMessage.new_from_text(answer)
        if res != GstSdp.SDPResult.OK:
            self.fail("unparsable answer")
            return False
        desc = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        self.pc.emit("set-remote-description", desc, Gst.Promise.new())
        return False

    def delete(self):
        if not self.location:
            return
        req = urllib.request.Request(self.location, method="DELETE")
        req.add_header("Authorization", "Bearer " + self.args.token)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                say("deleted", resp.status)
        except (urllib.error.HTTPError, OSError) as e:
            say("delete-failed", e)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True, help="the WHIP endpoint, e.g. http://host/whip/room")
    p.add_argument("--token", required=True, help="a host token (Bearer)")
    p.add_argument("--codec", choices=sorted(VIDEO), default="vp8")
    p.add_argument("--audio", action="store_true", help="add an Opus track")
    p.add_argument("--seconds", type=float, default=3.0, help="stay connected this long")
    p.add_argument("--timeout", type=int, default=15, help="give up unconnected after this")
    p.add_argument("--verbose", action="store_true", help="print the offer and answer on stderr")
    args = p.parse_args()
    Gst.init(None)
    sys.exit(Publisher(args).run())


if __name__ == "__main__":
    main()
