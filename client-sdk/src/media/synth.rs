//! Synthetic media, sans-IO: RTP payloads shaped like VP8 (RFC 7741), H.264 (RFC 6184) and
//! Opus, with real keyframe markers (so an SFU's keyframe detection works on them) and a
//! small "FRY" header carrying the frame number, packet index, layer, publisher tag and send
//! time, so a subscriber can check order, completeness and latency. Not decodable video.

use std::time::{SystemTime, UNIX_EPOCH};

/// Video payload shape.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum VideoCodec {
    Vp8,
    H264,
}

/// Bytes of the "FRY" header.
pub const MARK_LEN: usize = 24;
/// Largest RTP payload produced.
pub const MAX_PAYLOAD: usize = 1100;

/// What the "FRY" header says about a packet.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub layer: u8,
    /// Distinguishes publisher sessions (a restart gets a new tag).
    pub publisher: u32,
    pub frame: u32,
    pub index: u16,
    pub count: u16,
    /// Unix microseconds when the packet was built.
    pub sent_us: u64,
}

impl Mark {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"FRY");
        out.push(self.layer);
        out.extend_from_slice(&self.publisher.to_be_bytes());
        out.extend_from_slice(&self.frame.to_be_bytes());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.sent_us.to_be_bytes());
    }

    /// Find and read the header in the first bytes of a payload.
    pub fn find(payload: &[u8]) -> Option<Mark> {
        let window = &payload[..payload.len().min(48)];
        let at = window.windows(3).position(|w| w == b"FRY")?;
        let b = payload.get(at..at + MARK_LEN)?;
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let mut us = [0u8; 8];
        us.copy_from_slice(&b[16..24]);
        Some(Mark {
            layer: b[3],
            publisher: u32_at(4),
            frame: u32_at(8),
            index: u16_at(12),
            count: u16_at(14),
            sent_us: u64::from_be_bytes(us),
        })
    }
}

pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The RTP payloads of one video frame of about `bytes` bytes.
pub fn video_frame(
    codec: VideoCodec,
    keyframe: bool,
    bytes: usize,
    mark: Mark,
    picture_id: u16,
) -> Vec<Vec<u8>> {
    let per = MAX_PAYLOAD - 16 - MARK_LEN;
    let count = bytes.div_ceil(per).max(1);
    let mut out = Vec::with_capacity(count + 1);
    if codec == VideoCodec::H264 && keyframe {
        // STAP-A with SPS and PPS first, as encoders send them before an IDR.
        let mut p = vec![0x78];
        let sps = [0x67u8, 0x42, 0xe0, 0x1f, 0xda, 0x02, 0x80];
        let pps = [0x68u8, 0xce, 0x3c, 0x80];
        for nal in [&sps[..], &pps[..]] {
            p.extend_from_slice(&(nal.len() as u16).to_be_bytes());
            p.extend_from_slice(nal);
        }
        out.push(p);
    }
    let total = (count + out.len()) as u16;
    let first_index = out.len() as u16;
    for i in 0..count {
        let last = i + 1 == count;
        let mut p = Vec::with_capacity(MAX_PAYLOAD);
        match codec {
            VideoCodec::Vp8 => {
                // X=1, S=1 on the first packet, PID=0; I=1 with a 15-bit picture id.
                p.push(if i == 0 { 0x90 } else { 0x80 });
                p.push(0x80);
                p.push(0x80 | ((picture_id >> 8) as u8 & 0x7f));
                p.push(picture_id as u8);
                if i == 0 {
                    if keyframe {
                        // Frame tag (P=0, show_frame), start code, 320x180.
                        p.extend_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a]);
                        p.extend_from_slice(&320u16.to_le_bytes());
                        p.extend_from_slice(&180u16.to_le_bytes());
                    } else {
                        p.extend_from_slice(&[0x11, 0x02, 0x00]);
                    }
                }
            }
            VideoCodec::H264 => {
                // FU-A of an IDR (type 5) or a non-IDR slice (type 1).
                let (nri, typ) = if keyframe { (0x60, 5) } else { (0x40, 1) };
                p.push(nri | 28);
                let mut fu = typ;
                if i == 0 {
                    fu |= 0x80;
                }
                if last {
                    fu |= 0x40;
                }
                p.push(fu);
            }
        }
        Mark {
            index: first_index + i as u16,
            count: total,
            ..mark
        }
        .write(&mut p);
        let fill = if last {
            bytes.saturating_sub(per * (count - 1)).min(per)
        } else {
            per
        };
        p.resize(p.len() + fill, 0x55);
        out.push(p);
    }
    if codec == VideoCodec::H264 && keyframe {
        // The STAP-A carries a mark too (as trailing bytes after the NAL units' lengths say
        // they end), so receivers count it with its frame.
        let mut m = Vec::new();
        Mark {
            index: 0,
            count: total,
            ..mark
        }
        .write(&mut m);
        out[0].extend_from_slice(&m);
    }
    out
}

/// One Opus-shaped audio packet (20 ms, about 32 kbit/s).
pub fn audio_packet(mark: Mark) -> Vec<u8> {
    // TOC: config 31 (CELT FB 20 ms), mono, one frame.
    let mut p = vec![0xf8];
    Mark {
        index: 0,
        count: 1,
        ..mark
    }
    .write(&mut p);
    p.resize(80, 0xaa);
    p
}

/// Whether a payload starts a keyframe (same rules as the server's detection).
pub fn starts_keyframe(codec: VideoCodec, payload: &[u8]) -> bool {
    match codec {
        VideoCodec::Vp8 => str0m::format::detect_vp8_keyframe(payload),
        VideoCodec::H264 => {
            crate::rtp::h264_carries(payload, crate::rtp::H264_SPS)
                || str0m::format::detect_h264_keyframe(payload)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(frame: u32) -> Mark {
        Mark {
            layer: 1,
            publisher: 9,
            frame,
            index: 0,
            count: 0,
            sent_us: 42,
        }
    }

    #[test]
    fn frames_carry_marks_and_keyframe_markers() {
        for codec in [VideoCodec::Vp8, VideoCodec::H264] {
            let key = video_frame(codec, true, 5000, mark(7), 300);
            assert!(starts_keyframe(codec, &key[0]), "{codec:?}");
            assert!(key.iter().all(|p| p.len() <= MAX_PAYLOAD));
            let marks: Vec<Mark> = key.iter().filter_map(|p| Mark::find(p)).collect();
            assert_eq!(marks.len(), key.len());
            assert!(marks
                .iter()
                .all(|m| m.frame == 7 && m.count as usize == key.len()));
            let delta = video_frame(codec, false, 800, mark(8), 301);
            assert!(!starts_keyframe(codec, &delta[0]), "{codec:?}");
            assert_eq!(delta.len(), 1);
        }
        let a = audio_packet(mark(3));
        assert_eq!(Mark::find(&a).map(|m| m.frame), Some(3));
    }
}
