//! YAML files read as Compose reads them: one document, scalars as strings.

use yaml_rust2::{Yaml, YamlLoader};

use crate::files::read;

pub fn yaml(path: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"));
    assert_eq!(
        docs.len(),
        1,
        "{path} should hold exactly one YAML document"
    );
    docs.remove(0)
}

/// A YAML scalar as the string Compose would see.
pub fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

pub fn text(value: &Yaml, what: &str) -> String {
    scalar(value).unwrap_or_else(|| panic!("{what} should be a string, found {value:?}"))
}

pub fn strings(value: &Yaml, what: &str) -> Vec<String> {
    match value {
        Yaml::Array(items) => items.iter().map(|item| text(item, what)).collect(),
        Yaml::BadValue | Yaml::Null => Vec::new(),
        other => panic!("{what} should be a list, found {other:?}"),
    }
}
