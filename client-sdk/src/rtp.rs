//! RTP payload facts both ends need, without a WebRTC stack: which H.264 NAL units a packet
//! carries (RFC 6184 single NAL unit, STAP-A and FU-A packets). The server uses it to spot a
//! keyframe's start (SPS) and the SDK to check what it received; one definition for both.

/// NAL unit type of a sequence parameter set (a keyframe's access unit usually starts with it).
pub const H264_SPS: u8 = 7;
/// NAL unit type of an IDR slice.
pub const H264_IDR: u8 = 5;

const STAP_A: u8 = 24;
const FU_A: u8 = 28;

/// Whether an H.264 RTP payload carries (or, for a fragment, starts) a NAL unit of type
/// `nal_type`. Malformed aggregation lengths end the scan; nothing here panics on any input.
pub fn h264_carries(payload: &[u8], nal_type: u8) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        STAP_A => {
            let mut rest = &payload[1..];
            while rest.len() >= 3 {
                let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                if len == 0 || rest.len() < 2 + len {
                    return false;
                }
                if rest[2] & 0x1f == nal_type {
                    return true;
                }
                rest = &rest[2 + len..];
            }
            false
        }
        // The first fragment (S bit) names the fragmented unit's type.
        FU_A => payload
            .get(1)
            .is_some_and(|h| h & 0x80 != 0 && h & 0x1f == nal_type),
        t => t == nal_type,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_stap_a_and_fu_a() {
        assert!(h264_carries(&[0x67, 1, 2], H264_SPS));
        assert!(!h264_carries(&[0x41, 1, 2], H264_SPS));
        // STAP-A with SPS (len 2) and PPS (len 2).
        let stap = [0x78, 0, 2, 0x67, 0, 0, 2, 0x68, 0];
        assert!(h264_carries(&stap, H264_SPS));
        assert!(h264_carries(&stap, 8));
        assert!(!h264_carries(&stap, H264_IDR));
        // FU-A: start of an IDR, then a middle fragment.
        assert!(h264_carries(&[0x7c, 0x85, 0], H264_IDR));
        assert!(!h264_carries(&[0x7c, 0x05, 0], H264_IDR));
        // Truncated or empty input.
        assert!(!h264_carries(&[], H264_SPS));
        assert!(!h264_carries(&[0x78, 0, 9, 0x67], H264_SPS));
        assert!(!h264_carries(&[0x7c], H264_IDR));
    }
}
