//! What the official YAML files need beyond serde: OmegaConf's `${a.b}` references and YAML 1.1's
//! numbers written as strings.

use serde::Deserialize;
use serde_norway::Value;

use crate::error::{Error, Result};

/// Resolves OmegaConf interpolations of the form `${a.b.c}` (absolute paths in the document) in
/// place. Resolver calls (`${times:...}`) are rejected where they appear in the model.
pub(super) fn resolve_interpolations(root: &mut Value, origin: &str) -> Result<()> {
    fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
        path.split('.').try_fold(root, |node, key| node.get(key))
    }
    fn walk(node: &mut Value, root: &Value, origin: &str, depth: usize) -> Result<()> {
        match node {
            Value::String(s) if s.starts_with("${") && s.ends_with('}') => {
                let path = &s[2..s.len() - 1];
                if path.contains(':') || path.contains("${") || depth > 16 {
                    return Err(Error::config(
                        origin,
                        format!(
                            "interpolation {s:?} is not supported (only ${{a.b.c}} references)"
                        ),
                    ));
                }
                let mut value = lookup(root, path).cloned().ok_or_else(|| {
                    Error::config(origin, format!("interpolation {s:?} refers to nothing"))
                })?;
                walk(&mut value, root, origin, depth + 1)?;
                *node = value;
            }
            Value::Mapping(map) => {
                for (_, v) in map.iter_mut() {
                    walk(v, root, origin, depth)?;
                }
            }
            Value::Sequence(seq) => {
                for v in seq {
                    walk(v, root, origin, depth)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    let snapshot = root.clone();
    if let Some(model) = root.get_mut("model") {
        walk(model, &snapshot, origin, 0)?;
    }
    Ok(())
}

/// YAML 1.1 readers (PyYAML, and OmegaConf for some spellings) read `1e-6` as a string: accept both.
pub(super) fn float_or_string<'de, D: serde::Deserializer<'de>>(
    de: D,
) -> std::result::Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum FloatOrString {
        F(f64),
        S(String),
    }
    match FloatOrString::deserialize(de)? {
        FloatOrString::F(f) => Ok(f),
        FloatOrString::S(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a number"))),
    }
}
