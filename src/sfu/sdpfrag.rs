//! Trickle ICE SDP fragments (`application/trickle-ice-sdpfrag`, RFC 8840) as WHIP/WHEP PATCH
//! bodies carry them, sans-IO: parse a client's fragment, classify it as trickle or ICE restart
//! against the session's current remote credentials, and write the server's answer fragment.

/// What a PATCH body says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SdpFrag {
    /// `a=ice-ufrag` (session or media level).
    pub ufrag: Option<String>,
    pub pwd: Option<String>,
    /// `a=mid` of the m-section the candidates belong to.
    pub mid: Option<String>,
    /// Every `a=candidate:` line, without the `a=` prefix.
    pub candidates: Vec<String>,
    pub end_of_candidates: bool,
}

/// Why a fragment was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FragError {
    #[error("the fragment is not UTF-8 text")]
    NotText,
    #[error("line {0} is not an SDP line (`x=...`)")]
    BadLine(usize),
    #[error("too many candidates (at most {0})")]
    TooMany(usize),
    #[error("an ICE restart needs both a=ice-ufrag and a=ice-pwd")]
    HalfCredentials,
}

/// Most candidates one PATCH may carry.
pub const MAX_CANDIDATES: usize = 64;

impl SdpFrag {
    pub fn parse(body: &[u8]) -> Result<SdpFrag, FragError> {
        let text = std::str::from_utf8(body).map_err(|_| FragError::NotText)?;
        let mut frag = SdpFrag::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r').trim();
            if line.is_empty() {
                continue;
            }
            let b = line.as_bytes();
            if b.len() < 2 || b[1] != b'=' || !b[0].is_ascii_lowercase() {
                return Err(FragError::BadLine(i + 1));
            }
            let Some(attr) = line.strip_prefix("a=") else {
                continue; // m=, c=... lines only frame the attributes.
            };
            if let Some(v) = attr.strip_prefix("ice-ufrag:") {
                frag.ufrag = Some(v.trim().to_owned());
            } else if let Some(v) = attr.strip_prefix("ice-pwd:") {
                frag.pwd = Some(v.trim().to_owned());
            } else if let Some(v) = attr.strip_prefix("mid:") {
                frag.mid = Some(v.trim().to_owned());
            } else if attr.starts_with("candidate:") {
                if frag.candidates.len() == MAX_CANDIDATES {
                    return Err(FragError::TooMany(MAX_CANDIDATES));
                }
                frag.candidates.push(attr.to_owned());
            } else if attr == "end-of-candidates" {
                frag.end_of_candidates = true;
            }
        }
        Ok(frag)
    }

    /// An ICE restart: the fragment carries credentials other than `current_ufrag`.
    pub fn is_restart(&self, current_ufrag: &str) -> Result<bool, FragError> {
        match (&self.ufrag, &self.pwd) {
            (Some(u), Some(_)) => Ok(u != current_ufrag),
            (Some(u), None) if u != current_ufrag => Err(FragError::HalfCredentials),
            (None, Some(_)) => Err(FragError::HalfCredentials),
            _ => Ok(false),
        }
    }
}

/// The server's answer to an ICE restart: new credentials and its candidates, under the
/// m-section of `mid`.
pub fn answer_fragment(ufrag: &str, pwd: &str, mid: Option<&str>, candidates: &[String]) -> String {
    let mut s = format!("a=ice-lite\r\na=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n");
    if let Some(mid) = mid {
        s.push_str("m=audio 9 UDP/TLS/RTP/SAVPF 0\r\n");
        s.push_str(&format!("a=mid:{mid}\r\n"));
    }
    for c in candidates {
        let c = c.strip_prefix("a=").unwrap_or(c);
        s.push_str(&format!("a={c}\r\n"));
    }
    s.push_str("a=end-of-candidates\r\n");
    s
}

/// Replace the ICE credentials of an SDP offer (every occurrence), for re-applying the
/// client's original offer after it restarted ICE by PATCH.
pub fn with_credentials(sdp: &str, ufrag: &str, pwd: &str) -> String {
    let mut out = String::with_capacity(sdp.len() + 32);
    for line in sdp.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        let ending = &line[bare.len()..];
        if bare.starts_with("a=ice-ufrag:") {
            out.push_str("a=ice-ufrag:");
            out.push_str(ufrag);
            out.push_str(ending);
        } else if bare.starts_with("a=ice-pwd:") {
            out.push_str("a=ice-pwd:");
            out.push_str(pwd);
            out.push_str(ending);
        } else if bare.starts_with("a=candidate:") || bare == "a=end-of-candidates" {
            // Old generation's candidates are gone; new ones come in the fragment.
        } else {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRICKLE: &str = "a=ice-ufrag:EsAw\r\na=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\na=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1\r\na=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host generation 0 ufrag EsAw network-id 2\r\na=end-of-candidates\r\n";

    #[test]
    fn trickle_fragment_parses() {
        let f = SdpFrag::parse(TRICKLE.as_bytes()).expect("parses");
        assert_eq!(f.ufrag.as_deref(), Some("EsAw"));
        assert_eq!(f.mid.as_deref(), Some("0"));
        assert_eq!(f.candidates.len(), 2);
        assert!(f.candidates[0].starts_with("candidate:1387637174"));
        assert!(f.end_of_candidates);
        assert_eq!(f.is_restart("EsAw"), Ok(false));
        assert_eq!(f.is_restart("old"), Ok(true));
    }

    #[test]
    fn bad_fragments_are_refused() {
        assert_eq!(SdpFrag::parse(b"hello"), Err(FragError::BadLine(1)));
        assert_eq!(SdpFrag::parse(&[0xff, 0xfe]), Err(FragError::NotText));
        let many = "a=candidate:1 1 udp 1 192.0.2.1 1 typ host\r\n".repeat(MAX_CANDIDATES + 1);
        assert_eq!(
            SdpFrag::parse(many.as_bytes()),
            Err(FragError::TooMany(MAX_CANDIDATES))
        );
        let half = SdpFrag::parse(b"a=ice-ufrag:new\r\n").expect("parses");
        assert_eq!(half.is_restart("old"), Err(FragError::HalfCredentials));
    }

    #[test]
    fn credentials_are_replaced_and_old_candidates_dropped() {
        let sdp = "v=0\r\na=ice-ufrag:old\r\na=ice-pwd:oldpwd\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=candidate:1 1 udp 1 192.0.2.1 1 typ host\r\na=ice-ufrag:old\r\n";
        let out = with_credentials(sdp, "new", "newpwd");
        assert_eq!(out.matches("a=ice-ufrag:new\r\n").count(), 2);
        assert!(out.contains("a=ice-pwd:newpwd\r\n"));
        assert!(!out.contains("old"));
        assert!(!out.contains("candidate"));
        let answer = answer_fragment(
            "u",
            "p",
            Some("0"),
            &["candidate:1 1 udp 1 192.0.2.1 1 typ host".into()],
        );
        assert!(answer.contains("a=ice-ufrag:u\r\n") && answer.contains("a=mid:0\r\n"));
        assert!(answer.contains("\r\na=candidate:1 1 udp"));
    }
}
