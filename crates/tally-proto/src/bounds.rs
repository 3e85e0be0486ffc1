//! A counter's bounds (`counter.configure`): the lowest and highest value its writes may leave
//! it at, and whether a write that would cross one is refused or stopped at it (clamped).

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, ProtocolError};
use crate::message::OpKind;
use crate::name::CounterName;

/// A counter's rules: its bounds and what a write that would cross one does. The default is no
/// bound at all, which is every counter until it is configured.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Bounds {
    /// The lowest value writes may leave the counter at; `null`: no lower bound.
    #[serde(default)]
    pub min: Option<i64>,
    /// The highest value writes may leave the counter at; `null`: no upper bound.
    #[serde(default)]
    pub max: Option<i64>,
    /// Whether an increment or decrement that would cross a bound stops at it (and says
    /// `"clamped": true`) instead of being refused with `out_of_bounds`. A setValue or reset
    /// outside the bounds is refused either way: it names the value it wants, and storing
    /// another would make its history entry claim a value nobody asked for.
    #[serde(default)]
    pub clamp: bool,
}

/// What a write does under a counter's [`Bounds`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bounded {
    /// The result is within the bounds: stored as it is.
    Within(i64),
    /// The result crossed a bound and the counter clamps: the value stored is the bound.
    Clamped(i64),
}

impl Bounds {
    /// No bound (a counter never configured, or configured with neither `min` nor `max`).
    pub const NONE: Bounds = Bounds { min: None, max: None, clamp: false };

    /// Whether `value` lies within the bounds.
    pub fn contains(&self, value: i64) -> bool {
        self.min.is_none_or(|min| value >= min) && self.max.is_none_or(|max| value <= max)
    }

    /// Whether the counter has a rule at all (what `counter.list` shows).
    pub fn is_set(&self) -> bool {
        *self != Bounds::NONE
    }

    /// The bounds in words, for messages: `"min 0 and max 10"`, `"max 10"`, `"no bound"`.
    pub fn describe(&self) -> String {
        match (self.min, self.max) {
            (Some(min), Some(max)) => format!("min {min} and max {max}"),
            (Some(min), None) => format!("min {min}"),
            (None, Some(max)) => format!("max {max}"),
            (None, None) => "no bound".to_owned(),
        }
    }

    /// What a write of `kind` that would take counter `name` from `from` to `to` does: stored
    /// as it is, stopped at the bound it crosses (clamp mode), or refused.
    ///
    /// # Errors
    /// `out_of_bounds`, naming the bound crossed and carrying both bounds, when `to` is outside
    /// them and the counter does not clamp.
    pub fn check(
        &self,
        name: &CounterName,
        kind: OpKind,
        from: i64,
        to: i64,
    ) -> Result<Bounded, ProtocolError> {
        let crossed = match (self.min, self.max) {
            (Some(min), _) if to < min => ("min", min),
            (_, Some(max)) if to > max => ("max", max),
            _ => return Ok(Bounded::Within(to)),
        };
        if self.clamp && matches!(kind, OpKind::Increment | OpKind::Decrement) {
            return Ok(Bounded::Clamped(crossed.1));
        }
        let (which, bound) = crossed;
        Err(self.refusal(format!(
            "{} would take counter {name} from {from} to {to}, past its {which} {bound} (its bounds: {}); nothing was changed: write within the bounds, or change them with counter.configure",
            kind.as_str(),
            self.describe()
        )))
    }

    /// The `out_of_bounds` refusal of a `counter.configure` whose bounds leave out the
    /// counter's `value`.
    pub fn refuse_value(&self, name: &CounterName, value: i64) -> ProtocolError {
        self.refusal(format!(
            "counter {name} is at {value}, outside the asked {}; nothing was changed: set the counter within them first (counter.setValue), then configure it",
            self.describe()
        ))
    }

    fn refusal(&self, message: String) -> ProtocolError {
        let mut refusal = ProtocolError::new(ErrorCode::OutOfBounds, message);
        refusal.bounds = Some((self.min, self.max));
        refusal
    }
}

/// Whether a stored operation was clamped: an increment or decrement of `amount` from
/// `previous_value` that left another value than it asks for (the bound it stopped at). Only
/// those two clamp: a setValue or reset outside the bounds is refused, since it names the value
/// it wants (see [`Bounds::clamp`]).
pub fn is_clamped(kind: OpKind, amount: Option<i64>, previous_value: i64, value: i64) -> bool {
    let asked = match (kind, amount) {
        (OpKind::Increment, Some(amount)) => previous_value.checked_add(amount),
        (OpKind::Decrement, Some(amount)) => previous_value.checked_sub(amount),
        _ => return false,
    };
    asked != Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> CounterName {
        CounterName::parse("stock").unwrap()
    }

    #[test]
    fn a_result_within_is_kept_and_one_outside_is_refused_or_clamped() {
        let bounds = Bounds { min: Some(0), max: Some(10), clamp: false };
        assert_eq!(bounds.check(&name(), OpKind::Increment, 9, 10), Ok(Bounded::Within(10)));
        let refused = bounds.check(&name(), OpKind::Increment, 10, 11).unwrap_err();
        assert_eq!(refused.code, ErrorCode::OutOfBounds);
        assert_eq!(refused.bounds, Some((Some(0), Some(10))));
        assert!(refused.message.contains("past its max 10"), "{}", refused.message);
        let refused = bounds.check(&name(), OpKind::Decrement, 0, -1).unwrap_err();
        assert!(refused.message.contains("past its min 0"), "{}", refused.message);
        let clamps = Bounds { clamp: true, ..bounds };
        assert_eq!(clamps.check(&name(), OpKind::Increment, 8, 13), Ok(Bounded::Clamped(10)));
        assert_eq!(clamps.check(&name(), OpKind::Decrement, 0, -1), Ok(Bounded::Clamped(0)));
        let refused = clamps.check(&name(), OpKind::SetValue, 3, 11).unwrap_err();
        assert_eq!(refused.code, ErrorCode::OutOfBounds);
        assert!(is_clamped(OpKind::Increment, Some(5), 8, 10));
        assert!(is_clamped(OpKind::Decrement, Some(1), 0, 0));
        assert!(!is_clamped(OpKind::Increment, Some(2), 8, 10));
        assert!(!is_clamped(OpKind::SetValue, None, 8, 10));
        assert_eq!(Bounds::NONE.check(&name(), OpKind::SetValue, 0, -5), Ok(Bounded::Within(-5)));
        assert!(!Bounds::NONE.is_set());
        assert!(Bounds { min: None, max: Some(3), clamp: false }.contains(-100));
    }
}
