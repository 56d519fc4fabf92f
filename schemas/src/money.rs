//! Money: integer minor units (cents for EUR, yen for JPY) with an ISO 4217 currency.
//! Never floating point: sums are exact and comparisons are equality.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A current ISO 4217 alphabetic code of a circulating currency, such as `EUR`. Parsing
/// rejects anything else (superseded codes like `VES`, funds like `BOV`, specials like `XAU`
/// or `XXX`), so a `Currency` in hand is always one a shop can charge in.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency(iso_currency::Currency);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an ISO 4217 currency code")]
pub struct UnknownCurrency(pub String);

impl Currency {
    pub fn code(&self) -> &'static str {
        self.0.code()
    }

    /// How many digits the minor unit has (2 for EUR, 0 for JPY, 3 for KWD).
    pub fn minor_unit_digits(&self) -> u16 {
        self.0.exponent().unwrap_or(0)
    }

    /// Every code `Currency` accepts, for tests and documentation.
    pub fn all_codes() -> impl Iterator<Item = &'static str> {
        <iso_currency::Currency as iso_currency::IntoEnumIterator>::iter()
            .filter(|c| Self::is_circulating(*c))
            .map(|c| c.code())
    }

    fn is_circulating(c: iso_currency::Currency) -> bool {
        c.is_superseded().is_none() && !c.is_fund() && !c.is_special()
    }
}

impl FromStr for Currency {
    type Err = UnknownCurrency;
    fn from_str(code: &str) -> Result<Self, Self::Err> {
        iso_currency::Currency::from_code(code)
            .filter(|c| Self::is_circulating(*c))
            .map(Self)
            .ok_or_else(|| UnknownCurrency(code.to_owned()))
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = Cow::<'de, str>::deserialize(d)?;
        code.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Currency {
    fn schema_name() -> Cow<'static, str> {
        "Currency".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "ISO 4217 alphabetic currency code",
            "type": "string",
            "pattern": "^[A-Z]{3}$",
            "examples": ["EUR"]
        })
    }
}

/// An amount of money: `amount_cents` minor units of `currency`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Money {
    /// Minor units of the currency (cents for EUR); never negative.
    pub amount_cents: u64,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount_cents: u64, currency: Currency) -> Self {
        Self {
            amount_cents,
            currency,
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = u32::from(self.currency.minor_unit_digits());
        if digits == 0 {
            return write!(f, "{} {}", self.amount_cents, self.currency);
        }
        let scale = 10u64.pow(digits);
        let (major, minor) = (self.amount_cents / scale, self.amount_cents % scale);
        write!(
            f,
            "{major}.{minor:0width$} {}",
            self.currency,
            width = digits as usize
        )
    }
}

#[cfg(test)]
impl proptest::arbitrary::Arbitrary for Currency {
    type Parameters = ();
    type Strategy = proptest::strategy::BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        use proptest::strategy::Strategy;
        let all: Vec<Currency> = Currency::all_codes()
            .map(|c| c.parse().expect("listed codes parse"))
            .collect();
        proptest::sample::select(all).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iso_codes_and_rejects_others() {
        assert_eq!("EUR".parse::<Currency>().unwrap().code(), "EUR");
        assert_eq!("JPY".parse::<Currency>().unwrap().minor_unit_digits(), 0);
        for bad in ["eur", "EURO", "XYZ", "", "€", "VES", "BOV", "XAU", "XXX"] {
            assert!(bad.parse::<Currency>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn displays_in_major_units_without_floats() {
        let eur: Currency = "EUR".parse().unwrap();
        assert_eq!(Money::new(2501, eur).to_string(), "25.01 EUR");
        assert_eq!(Money::new(5, eur).to_string(), "0.05 EUR");
        let jpy: Currency = "JPY".parse().unwrap();
        assert_eq!(Money::new(1200, jpy).to_string(), "1200 JPY");
    }

    #[test]
    fn json_form_is_cents_and_code() {
        let m = Money::new(1250, "EUR".parse().unwrap());
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"amount_cents":1250,"currency":"EUR"}"#
        );
        assert!(serde_json::from_str::<Money>(r#"{"amount_cents":1,"currency":"ABC"}"#).is_err());
        assert!(serde_json::from_str::<Money>(r#"{"amount_cents":-1,"currency":"EUR"}"#).is_err());
    }
}
