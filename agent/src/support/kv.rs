//! `key value` text records, one per line: the journal and the last-result file. Human-readable
//! over a serial console (`cat`), trivially parsed, written only through `write_atomic`.

use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub fields: Vec<(String, String)>,
}

impl Record {
    pub fn new() -> Record {
        Record::default()
    }

    pub fn set(&mut self, key: &str, value: impl ToString) -> &mut Record {
        let value = value.to_string().replace('\n', " ");
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((key.to_string(), value)),
        }
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn num(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| v.parse().ok())
    }

    pub fn parse(text: &str) -> Record {
        let fields = text
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ').unwrap_or((l, ""));
                (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
            })
            .collect();
        Record { fields }
    }

    pub fn render(&self) -> String {
        self.fields
            .iter()
            .map(|(k, v)| format!("{k} {v}\n"))
            .collect()
    }

    pub fn load(path: &Path) -> std::io::Result<Option<Record>> {
        match std::fs::read_to_string(path) {
            Ok(t) => Ok(Some(Record::parse(&t))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        crate::support::fsutil::write_atomic(path, self.render().as_bytes(), false)
    }
}
