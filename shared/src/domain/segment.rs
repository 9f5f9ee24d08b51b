//! Chain segments: how a chain's waves are grouped for the state machine. A run of
//! consecutive waves of automated steps is one segment that one worker runs under one task
//! token (one state transition for the whole run); a wave with a manual step is a segment of
//! its own whose steps keep their own tokens, as a person answers each.

use super::chain::StepConfig;
use std::time::Duration;

/// How long a segment's token may go without a heartbeat. It covers the gaps in which no
/// worker holds the segment: its message waiting on a busy tier queue, a backoff's delayed copy
/// (at most [`MAX_STEP_BACKOFF`]), a deferral, a hand-off to a fresh invocation.
pub const SEGMENT_HEARTBEAT_SECONDS: u32 = 600;
/// Step Functions' longest Standard execution (one year); a token timeout past it means nothing.
pub const MAX_SEGMENT_TIMEOUT_SECONDS: u32 = 365 * 24 * 60 * 60;
/// Added to a segment's bound for queue waits and hand-offs between deliveries.
const SEGMENT_MARGIN_SECONDS: u32 = 900;
// Step Functions requires a heartbeat shorter than the timeout; every segment's timeout is at
// least the margin.
const _: () = assert!(SEGMENT_HEARTBEAT_SECONDS < SEGMENT_MARGIN_SECONDS);
/// Per wave: the wave's hand-offs (deferrals, a fresh invocation) on top of its runs.
const WAVE_MARGIN_SECONDS: u32 = 60;
/// The chain's retry backoff: 2 s × 2^n, at most 60 s, full jitter (what the chain
/// definition's Retry blocks did: IntervalSeconds 2, BackoffRate 2, MaxDelaySeconds 60).
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
pub const MAX_STEP_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// Waves `first..=last`, all automated: one worker runs them under one token.
    Automated { first: usize, last: usize },
    /// One wave with a manual step: each of its steps has its own token.
    Manual { wave: usize },
}

/// Groups waves (true = the wave holds a manual step) into segments, in order.
pub fn segments(wave_is_manual: &[bool]) -> Vec<Segment> {
    let mut out = Vec::new();
    for (wave, &manual) in wave_is_manual.iter().enumerate() {
        match out.last_mut() {
            _ if manual => out.push(Segment::Manual { wave }),
            Some(Segment::Automated { last, .. }) => *last = wave,
            _ => out.push(Segment::Automated {
                first: wave,
                last: wave,
            }),
        }
    }
    out
}

/// The ceiling of the wait before retry `retry` (1 for the first retry, …).
pub fn backoff_ceiling(retry: u32) -> Duration {
    let exponent = retry.saturating_sub(1).min(10);
    (FIRST_BACKOFF * (1u32 << exponent)).min(MAX_STEP_BACKOFF)
}

/// The wait before retry `retry`, with full jitter; `unit` is uniform in [0, 1).
pub fn backoff(retry: u32, unit: f64) -> Duration {
    let unit = if unit.is_nan() {
        0.0
    } else {
        unit.clamp(0.0, 1.0)
    };
    backoff_ceiling(retry).mul_f64(unit)
}

/// The segment token's heartbeat window: ten minutes, or the shortest `heartbeatSeconds` a
/// step of the segment asks for (a step's heartbeat promise is kept by the segment's: a worker
/// that stops is noticed as soon as that step's own token would have noticed it).
///
/// A heartbeat within a second of its step's timeout (the default) is in effect none, for the
/// step and so for the segment: counted, a step with a 2 s timeout would give the whole
/// segment a 1 s window from the moment its message is sent, which a busy tier queue's wait
/// alone exceeds, and the chain would fail before the step ever ran.
pub fn segment_heartbeat_seconds<'a>(steps: impl IntoIterator<Item = &'a StepConfig>) -> u32 {
    steps
        .into_iter()
        .filter(|c| c.heartbeat_seconds + 1 < c.timeout_seconds)
        .map(|c| c.heartbeat_seconds)
        .fold(SEGMENT_HEARTBEAT_SECONDS, u32::min)
}

/// The longest one step may take over all its attempts: each at its full timeout, and the
/// longest backoffs between them.
fn step_bound(config: &StepConfig) -> u64 {
    let runs = u64::from(config.timeout_seconds) * u64::from(config.max_attempts);
    let waits: u64 = (1..config.max_attempts)
        .map(|retry| backoff_ceiling(retry).as_secs())
        .sum();
    runs + waits
}

/// The segment token's timeout: per wave its slowest step's bound (the wave's steps run in
/// parallel), plus margins; capped at Step Functions' longest execution.
pub fn segment_timeout_seconds<'a>(waves: impl IntoIterator<Item = Vec<&'a StepConfig>>) -> u32 {
    let total: u64 = waves
        .into_iter()
        .map(|wave| {
            wave.into_iter().map(step_bound).max().unwrap_or(0) + u64::from(WAVE_MARGIN_SECONDS)
        })
        .sum::<u64>()
        + u64::from(SEGMENT_MARGIN_SECONDS);
    total.min(u64::from(MAX_SEGMENT_TIMEOUT_SECONDS)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn consecutive_automated_waves_share_a_segment_and_a_manual_wave_stands_alone() {
        assert_eq!(
            segments(&[false, false, true, true, false]),
            vec![
                Segment::Automated { first: 0, last: 1 },
                Segment::Manual { wave: 2 },
                Segment::Manual { wave: 3 },
                Segment::Automated { first: 4, last: 4 },
            ]
        );
        assert_eq!(
            segments(&[false, false, false]),
            vec![Segment::Automated { first: 0, last: 2 }]
        );
        assert!(segments(&[]).is_empty());
    }

    #[test]
    fn backoff_doubles_from_two_seconds_up_to_a_minute() {
        let ceilings: Vec<u64> = (1..=7).map(|r| backoff_ceiling(r).as_secs()).collect();
        assert_eq!(ceilings, [2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(3, 0.5), Duration::from_secs(4));
        assert_eq!(backoff(3, f64::NAN), Duration::ZERO);
    }

    #[test]
    fn a_segment_s_timeout_covers_every_attempt_of_its_slowest_steps() {
        let quick = StepConfig::parse(&json!({"timeoutSeconds": 10})).unwrap();
        let retried =
            StepConfig::parse(&json!({"timeoutSeconds": 100, "retry": {"maxAttempts": 3}}))
                .unwrap();
        // Wave 1: max(10, 3 × 100 + 2 + 4) + 60; wave 2: 10 + 60; margin 900.
        assert_eq!(
            segment_timeout_seconds([vec![&quick, &retried], vec![&quick]]),
            366 + 70 + 900
        );
        let longest = StepConfig::parse(
            &json!({"timeoutSeconds": super::super::chain::MAX_STEP_TIMEOUT_SECONDS, "retry": {"maxAttempts": 5}}),
        )
        .unwrap();
        let waves = (0..100).map(|_| vec![&longest]);
        assert_eq!(segment_timeout_seconds(waves), MAX_SEGMENT_TIMEOUT_SECONDS);
    }

    #[test]
    fn the_shortest_heartbeat_a_step_asks_for_is_the_segment_s_and_a_default_one_counts_for_none() {
        let beating = StepConfig::parse(&json!({"heartbeatSeconds": 10})).unwrap();
        let beating_fast =
            StepConfig::parse(&json!({"heartbeatSeconds": 5, "timeoutSeconds": 60})).unwrap();
        assert_eq!(segment_heartbeat_seconds([&beating]), 10);
        assert_eq!(segment_heartbeat_seconds([&beating, &beating_fast]), 5);
        // Defaults, one second under the timeout: a 2 s step must not give its segment a
        // 1 s window, nor a 10 s one a 9 s window.
        let two = StepConfig::parse(&json!({"timeoutSeconds": 2})).unwrap();
        let ten = StepConfig::parse(&json!({"timeoutSeconds": 10})).unwrap();
        assert_eq!(two.heartbeat_seconds, 1);
        assert_eq!(
            segment_heartbeat_seconds([&two, &ten]),
            SEGMENT_HEARTBEAT_SECONDS
        );
        assert_eq!(segment_heartbeat_seconds([&two, &beating]), 10);
        // Asked for explicitly, one under the timeout is still in effect none.
        let explicit =
            StepConfig::parse(&json!({"heartbeatSeconds": 59, "timeoutSeconds": 60})).unwrap();
        assert_eq!(
            segment_heartbeat_seconds([&explicit]),
            SEGMENT_HEARTBEAT_SECONDS
        );
        let hour = StepConfig::parse(&json!({"timeoutSeconds": 3600})).unwrap();
        assert_eq!(
            segment_heartbeat_seconds([&hour]),
            SEGMENT_HEARTBEAT_SECONDS
        );
    }
}
