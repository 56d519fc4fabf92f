//! Reading a JSON body field by field, collecting every error instead of stopping at the
//! first, so that a 422 lists all failing fields.

use serde_json::Value;
use uuid::Uuid;

use super::error::{ApiError, FieldError};

/// A cursor over a JSON object that records what is wrong with it.
#[derive(Debug)]
pub struct Fields<'a> {
    object: Option<&'a serde_json::Map<String, Value>>,
    prefix: String,
    errors: Vec<FieldError>,
}

impl<'a> Fields<'a> {
    /// The body must be an object; anything else is one error for the whole body.
    pub fn of(value: &'a Value) -> Self {
        let mut fields = Self::at(value, "");
        if fields.object.is_none() {
            fields
                .errors
                .push(FieldError::new("$", "must be a JSON object"));
        }
        fields
    }

    fn at(value: &'a Value, prefix: &str) -> Self {
        Self {
            object: value.as_object(),
            prefix: prefix.to_owned(),
            errors: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn fail(&mut self, name: &str, message: impl Into<String>) {
        if self.object.is_none() {
            return; // Already reported: the body is not an object.
        }
        let path = self.path(name);
        self.errors.push(FieldError::new(path, message));
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.object?.get(name).filter(|v| !v.is_null())
    }

    /// A required string.
    pub fn string(&mut self, name: &str) -> Option<&'a str> {
        match self.get(name) {
            None => {
                self.fail(name, "is required");
                None
            }
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                self.fail(name, "must be a string");
                None
            }
        }
    }

    /// An optional string (absent or null: `None`).
    pub fn optional_string(&mut self, name: &str, max_chars: usize) -> Option<&'a str> {
        match self.get(name) {
            None => None,
            Some(Value::String(s)) if s.chars().count() <= max_chars => Some(s),
            Some(Value::String(_)) => {
                self.fail(name, format!("must be at most {max_chars} characters"));
                None
            }
            Some(_) => {
                self.fail(name, "must be a string");
                None
            }
        }
    }

    /// An optional UUID.
    pub fn optional_uuid(&mut self, name: &str) -> Option<Uuid> {
        let text = self.get(name)?;
        match text.as_str().map(Uuid::parse_str) {
            Some(Ok(uuid)) => Some(uuid),
            _ => {
                self.fail(name, "must be a UUID");
                None
            }
        }
    }

    /// A required integer within `range`.
    pub fn integer(&mut self, name: &str, range: std::ops::RangeInclusive<u64>) -> Option<u64> {
        match self.get(name) {
            None => {
                self.fail(name, "is required");
                None
            }
            Some(Value::Number(n)) => match n.as_u64().filter(|v| range.contains(v)) {
                Some(v) => Some(v),
                None => {
                    self.fail(
                        name,
                        format!(
                            "must be an integer from {} to {}",
                            range.start(),
                            range.end()
                        ),
                    );
                    None
                }
            },
            Some(_) => {
                self.fail(name, "must be an integer");
                None
            }
        }
    }

    /// A required array of objects, each read by `each` (with errors under `name[i].`),
    /// of `min..=max` items.
    pub fn array_of<T>(
        &mut self,
        name: &str,
        min: usize,
        max: usize,
        mut each: impl FnMut(&mut Fields<'a>) -> Option<T>,
    ) -> Option<Vec<T>> {
        let items = match self.get(name) {
            None => {
                self.fail(name, "is required");
                return None;
            }
            Some(Value::Array(items)) => items,
            Some(_) => {
                self.fail(name, "must be an array");
                return None;
            }
        };
        if items.len() < min || items.len() > max {
            self.fail(name, format!("must have {min} to {max} items"));
            return None;
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let mut inner = Fields::at(item, &format!("{}[{i}].", self.path(name)));
            if inner.object.is_none() {
                self.fail(&format!("{name}[{i}]"), "must be an object");
                continue;
            }
            let value = each(&mut inner);
            self.errors.append(&mut inner.errors);
            out.extend(value);
        }
        (out.len() == items.len()).then_some(out)
    }

    /// Ok with `value` when no field failed, else every error.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, ApiError> {
        match value {
            Some(value) if self.errors.is_empty() => Ok(value),
            _ if self.errors.is_empty() => Err(ApiError::Validation(vec![FieldError::new(
                "$",
                "is invalid",
            )])),
            _ => Err(ApiError::Validation(self.errors)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_failing_field_is_reported_with_its_path() {
        let body = json!({
            "name": 42,
            "lines": [{"sku": "A", "quantity": 0}, {"sku": 5, "quantity": "two"}, "oops"]
        });
        let mut fields = Fields::of(&body);
        let name = fields.string("name");
        let email = fields.string("email");
        let lines = fields.array_of("lines", 1, 100, |line| {
            let sku = line.string("sku");
            let quantity = line.integer("quantity", 1..=1000);
            Some((sku?, quantity?))
        });
        let Err(ApiError::Validation(errors)) = fields.finish(name.zip(email).zip(lines)) else {
            panic!("invalid");
        };
        let paths: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            paths,
            [
                "name",
                "email",
                "lines[0].quantity",
                "lines[1].sku",
                "lines[1].quantity",
                "lines[2]"
            ]
        );
    }

    #[test]
    fn a_body_that_is_not_an_object_is_one_error() {
        let body = json!([1, 2]);
        let mut fields = Fields::of(&body);
        let name = fields.string("name");
        let Err(ApiError::Validation(errors)) = fields.finish(name) else {
            panic!("invalid");
        };
        assert_eq!(errors, [FieldError::new("$", "must be a JSON object")]);
    }
}
