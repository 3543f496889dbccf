//! Open-model arrival schedules: when each viewer is due to arrive.
//!
//! Each phase has a rate that moves linearly from `r0` to `r1` over its duration `T` (a hold
//! or spike has `r0 = r1`). Arrivals are the points where the integral of the rate reaches
//! 0, 1, 2, ...: within a phase `N(t) = r0·t + (r1 − r0)·t² / 2T`, solved for `t`. Arrival
//! times are fixed up front and never wait for earlier viewers, so a slow server shows up as
//! long join times instead of a lower arrival rate (no coordinated omission).

use crate::scenario::Phase;
use std::time::Duration;

/// Every arrival's offset from the start of the run, in order.
#[derive(Clone, Debug)]
pub struct ArrivalSchedule {
    offsets: Vec<Duration>,
    span: Duration,
}

impl ArrivalSchedule {
    /// The schedule of `phases`, stopping at `cap` arrivals.
    pub fn new(phases: &[Phase], cap: usize) -> Self {
        let mut offsets: Vec<Duration> = Vec::new();
        let mut phase_start = 0.0f64;
        let mut capped = false;
        // Arrivals counted so far, as the real-valued integral of the rate.
        let mut before = 0.0f64;
        'phases: for phase in phases {
            let length = phase.duration().as_secs_f64();
            let (r0, r1) = phase.rates();
            let slope = (r1 - r0) / length;
            let in_phase = r0 * length + slope * length * length / 2.0;
            let after = before + in_phase;
            // Next arrival index k is due when the integral reaches k.
            let mut k = offsets.len() as f64;
            while k < after - 1e-9 {
                if offsets.len() >= cap {
                    capped = true;
                    break 'phases;
                }
                let x = (k - before).max(0.0);
                let t = time_to_reach(x, r0, slope).clamp(0.0, length);
                offsets.push(Duration::from_secs_f64(phase_start + t));
                k += 1.0;
            }
            before = after;
            phase_start += length;
        }
        // Capped: arrivals end with the last one; otherwise with the phases.
        let span = match offsets.last() {
            Some(last) if capped => *last,
            _ => Duration::from_secs_f64(phase_start),
        };
        Self { offsets, span }
    }

    /// Arrival offsets from the start of the run.
    pub fn offsets(&self) -> &[Duration] {
        &self.offsets
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// When arrivals end: the phases' total length, or the last arrival when capped.
    pub fn span(&self) -> Duration {
        self.span
    }
}

/// Time `t` at which `r0·t + slope·t²/2 = x` (the smallest non-negative root).
fn time_to_reach(x: f64, r0: f64, slope: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if slope.abs() < 1e-12 {
        return if r0 > 0.0 { x / r0 } else { f64::INFINITY };
    }
    let discriminant = r0 * r0 + 2.0 * slope * x;
    if discriminant < 0.0 {
        return f64::INFINITY;
    }
    (-r0 + discriminant.sqrt()) / slope
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn hold_arrives_at_a_constant_rate() {
        let s = ArrivalSchedule::new(
            &[Phase::Hold {
                rate: 100.0,
                duration: secs(2.0),
            }],
            usize::MAX,
        );
        assert_eq!(s.len(), 200);
        assert_eq!(s.offsets()[0], Duration::ZERO);
        let gap = s.offsets()[11] - s.offsets()[10];
        assert!((gap.as_secs_f64() - 0.01).abs() < 1e-6, "{gap:?}");
        assert!(s.offsets().iter().all(|o| *o < secs(2.0)));
    }

    #[test]
    fn ramp_count_is_the_area_under_the_rate() {
        let s = ArrivalSchedule::new(
            &[Phase::Ramp {
                from: 0.0,
                to: 100.0,
                duration: secs(10.0),
            }],
            usize::MAX,
        );
        assert_eq!(s.len(), 500);
        // Rising rate: half of the arrivals come in the last ~29 % of the time.
        let median = s.offsets()[250].as_secs_f64();
        assert!((median - 10.0 / 2f64.sqrt()).abs() < 0.05, "{median}");
        assert!(s.offsets().windows(2).all(|w| w[0] <= w[1]));
        // A falling ramp mirrors it.
        let down = ArrivalSchedule::new(
            &[Phase::Ramp {
                from: 100.0,
                to: 0.0,
                duration: secs(10.0),
            }],
            usize::MAX,
        );
        assert_eq!(down.len(), 500);
        assert!(down.offsets()[250].as_secs_f64() < 3.0);
    }

    #[test]
    fn phases_chain_and_pauses_add_nothing() {
        let phases = [
            Phase::Hold {
                rate: 10.0,
                duration: secs(1.0),
            },
            Phase::Pause {
                duration: secs(5.0),
            },
            Phase::Spike {
                rate: 1000.0,
                duration: secs(0.5),
            },
        ];
        let s = ArrivalSchedule::new(&phases, usize::MAX);
        assert_eq!(s.len(), 510);
        assert_eq!(s.span(), secs(6.5));
        assert!(s.offsets()[9] < secs(1.0));
        assert!(s.offsets()[10] >= secs(6.0));
        assert!(s.offsets()[509] < secs(6.5));
    }

    #[test]
    fn cap_stops_arrivals() {
        let s = ArrivalSchedule::new(
            &[Phase::Hold {
                rate: 1000.0,
                duration: secs(10.0),
            }],
            42,
        );
        assert_eq!(s.len(), 42);
        assert_eq!(s.span(), s.offsets()[41]);
    }
}
