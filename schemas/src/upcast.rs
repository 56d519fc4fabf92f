//! Upcasting: an event read from the log at an older schema version is rewritten, one
//! version step at a time, into the current version before any code decodes it. Old
//! events are never rewritten in Kafka; the log stays as it was written.

use serde_json::Value;

use crate::DecodeError;
use crate::orders::legacy::OrderPlacedV1;

/// Rewrites the `data` of `type_name` from `from_version` to `from_version + 1`.
#[derive(Clone, Copy, Debug)]
pub struct Upcaster {
    pub type_name: &'static str,
    pub from_version: u32,
    pub apply: fn(Value) -> Result<Value, String>,
}

/// Every upcaster, in no particular order; [`upcast`] chains them.
pub const UPCASTERS: &[Upcaster] = &[Upcaster {
    type_name: "OrderPlaced",
    from_version: 1,
    apply: order_placed_v1_to_v2,
}];

fn order_placed_v1_to_v2(data: Value) -> Result<Value, String> {
    let v1: OrderPlacedV1 = serde_json::from_value(data).map_err(|e| e.to_string())?;
    let v2 = v1.upcast().ok_or("order total overflows")?;
    serde_json::to_value(v2).map_err(|e| e.to_string())
}

/// Brings `data` of `type_name` from `version` to `current`.
pub fn upcast(
    type_name: &str,
    version: u32,
    current: u32,
    mut data: Value,
) -> Result<Value, DecodeError> {
    if version > current {
        return Err(DecodeError::NewerVersion {
            type_name: type_name.to_owned(),
            version,
            current,
        });
    }
    for from in version..current {
        let step = UPCASTERS
            .iter()
            .find(|u| u.type_name == type_name && u.from_version == from)
            .ok_or_else(|| DecodeError::NoUpcaster {
                type_name: type_name.to_owned(),
                from_version: from,
            })?;
        data = (step.apply)(data).map_err(|reason| DecodeError::UpcastFailed {
            type_name: type_name.to_owned(),
            from_version: from,
            reason,
        })?;
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::catalog;

    #[test]
    fn every_superseded_version_has_a_path_to_the_current_one() {
        for legacy in catalog::legacy_types() {
            let current = catalog::current_version(legacy.name).expect("type still exists");
            for from in legacy.version..current {
                assert!(
                    UPCASTERS
                        .iter()
                        .any(|u| u.type_name == legacy.name && u.from_version == from),
                    "{} has no upcaster from v{from}",
                    legacy.name
                );
            }
        }
    }

    #[test]
    fn a_version_newer_than_this_build_is_refused_not_guessed() {
        let err = upcast("OrderPlaced", 3, 2, json!({})).unwrap_err();
        assert!(matches!(err, DecodeError::NewerVersion { version: 3, .. }));
    }

    #[test]
    fn a_broken_old_payload_fails_with_the_step_that_failed() {
        let err = upcast("OrderPlaced", 1, 2, json!({"order_id": 5})).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::UpcastFailed {
                from_version: 1,
                ..
            }
        ));
    }
}
