//! Rate limiter changes on the control socket (`set-net`, `set-drive`):
//! Firecracker's PATCH of a network interface's `rx_rate_limiter` /
//! `tx_rate_limiter` and of a drive's `rate_limiter`.
//! Per bucket: absent keeps it, `null` removes it, an object replaces it
//! (full, with its one-time burst); a bucket of `size` or `refill_time` 0
//! removes it, as in Firecracker.

use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use crate::config::{RateLimiterSpec, TokenBucketSpec};
use crate::ratelimit::BucketUpdate;

/// One bucket as Firecracker writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketJson {
    pub size: u64,
    #[serde(default)]
    pub one_time_burst: u64,
    /// Milliseconds.
    pub refill_time: u64,
}

/// A rate limiter change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimiterPatch {
    #[serde(default, deserialize_with = "present")]
    pub bandwidth: Option<Option<BucketJson>>,
    #[serde(default, deserialize_with = "present")]
    pub ops: Option<Option<BucketJson>>,
}

/// `Some(x)` for a field that is present (even as `null`), `None` if absent.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<BucketJson>>, D::Error> {
    Option::<BucketJson>::deserialize(d).map(Some)
}

fn update(field: Option<Option<BucketJson>>) -> BucketUpdate {
    match field {
        None => BucketUpdate::Keep,
        Some(None) => BucketUpdate::Disable,
        Some(Some(b)) if b.size == 0 || b.refill_time == 0 => BucketUpdate::Disable,
        Some(Some(b)) => BucketUpdate::Replace(TokenBucketSpec {
            size: b.size,
            one_time_burst: b.one_time_burst,
            refill_time_ms: b.refill_time,
        }),
    }
}

impl LimiterPatch {
    /// (bandwidth, ops) updates.
    pub fn updates(&self) -> (BucketUpdate, BucketUpdate) {
        (update(self.bandwidth), update(self.ops))
    }
}

/// A limiter as the reply shows it (Firecracker's field names; `null`: no
/// bucket).
pub fn limiter_json(spec: &RateLimiterSpec) -> Value {
    let bucket = |b: &Option<TokenBucketSpec>| {
        b.map(|b| {
            json!({"size": b.size, "one_time_burst": b.one_time_burst, "refill_time": b.refill_time_ms})
        })
    };
    json!({"bandwidth": bucket(&spec.bandwidth), "ops": bucket(&spec.ops)})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_keeps_null_removes_an_object_replaces() {
        let p: LimiterPatch = serde_json::from_str(
            r#"{"bandwidth": {"size": 1000, "refill_time": 100}, "ops": null}"#,
        )
        .expect("parses");
        assert_eq!(
            p.updates(),
            (
                BucketUpdate::Replace(TokenBucketSpec {
                    size: 1000,
                    one_time_burst: 0,
                    refill_time_ms: 100
                }),
                BucketUpdate::Disable
            )
        );
        let keep: LimiterPatch = serde_json::from_str("{}").expect("parses");
        assert_eq!(keep.updates(), (BucketUpdate::Keep, BucketUpdate::Keep));
        let e = serde_json::from_str::<LimiterPatch>(r#"{"bandwith": null}"#).expect_err("a typo");
        assert!(e.to_string().contains("unknown field `bandwith`"), "{e}");
        let e = serde_json::from_str::<LimiterPatch>(r#"{"ops": {"size": 1}}"#)
            .expect_err("no refill time");
        assert!(e.to_string().contains("refill_time"), "{e}");
    }

    #[test]
    fn replies_use_firecrackers_names() {
        let spec = RateLimiterSpec {
            bandwidth: None,
            ops: Some(TokenBucketSpec {
                size: 5,
                one_time_burst: 1,
                refill_time_ms: 10,
            }),
        };
        assert_eq!(
            limiter_json(&spec),
            json!({"bandwidth": null, "ops": {"size": 5, "one_time_burst": 1, "refill_time": 10}})
        );
    }

    #[test]
    fn a_bucket_of_size_or_refill_time_0_is_removed() {
        let p = |text: &str| -> LimiterPatch { serde_json::from_str(text).expect("parses") };
        let zero = p(
            r#"{"bandwidth": {"size": 0, "refill_time": 100}, "ops": {"size": 10, "refill_time": 0}}"#,
        );
        assert_eq!(
            zero.updates(),
            (BucketUpdate::Disable, BucketUpdate::Disable)
        );
        let burst = p(r#"{"ops": {"size": 10, "one_time_burst": 7, "refill_time": 100}}"#);
        assert_eq!(
            burst.updates(),
            (
                BucketUpdate::Keep,
                BucketUpdate::Replace(TokenBucketSpec {
                    size: 10,
                    one_time_burst: 7,
                    refill_time_ms: 100
                })
            )
        );
    }
}
