//! Blocked time as a pprof profile (`profile.proto`, gzip-compressed), for `go tool
//! pprof`, Pyroscope and Grafana.
//!
//! The messages are written by hand with `prost`'s derive (the field numbers of
//! github.com/google/pprof's `proto/profile.proto`), so no `protoc` is needed to
//! build. Only what dstrace fills in is declared; a reader skips nothing it needs.
//!
//! Each sample is one aggregated row of a recording: its kernel stack (leaf
//! first, as pprof wants; [`crate::sinks::report::profile`] gives it from the
//! blocking function on, so the flat values of `go tool pprof -top` rank the
//! functions that blocked, not `__schedule`), two values (`blocked`/`nanoseconds`
//! and `count`/`count`) and labels `comm`, `pid` (numeric), `mount` and `lock`, so
//! that `go tool pprof -tagfocus comm=nfsd` or `-tags` work, and `-tagroot=comm`
//! puts the command at the root as the folded stacks have it. Names and labels are
//! escaped as in text output ([`crate::sinks::text::escape`]): a process name with a
//! terminal escape sequence does not reach the terminal of whoever reads the profile.

use std::{collections::HashMap, io::Write as _};

use anyhow::{Context as _, Result};
use prost::Message as _;

use crate::escape::escape;

/// `Profile`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    /// The kinds of values of each sample.
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    /// The samples.
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    /// Mappings (one: the kernel).
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    /// Locations (one per function here).
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    /// Functions.
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// Every string; the first is empty.
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    /// When the profile begins, in nanoseconds since the epoch.
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    /// How long it covers.
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    /// The kind of the period.
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    /// The period.
    #[prost(int64, tag = "12")]
    pub period: i64,
    /// Comments (string indices).
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    /// The index (in `string_table`) of the sample type shown by default.
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

/// `ValueType`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    /// Name (string index).
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    /// Unit (string index).
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

/// `Sample`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Locations, leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    /// One value per sample type.
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    /// Labels.
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

/// `Label`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    /// Key (string index).
    #[prost(int64, tag = "1")]
    pub key: i64,
    /// A string value (string index), or 0.
    #[prost(int64, tag = "2")]
    pub str: i64,
    /// A numeric value.
    #[prost(int64, tag = "3")]
    pub num: i64,
}

/// `Mapping`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    /// Id (1 and up).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// File name (string index).
    #[prost(int64, tag = "5")]
    pub filename: i64,
    /// Locations of this mapping already name their functions.
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
}

/// `Location`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    /// Id (1 and up).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Its mapping.
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    /// Lines (one: the function).
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

/// `Line`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    /// The function.
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
}

/// `Function`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    /// Id (1 and up).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Name (string index).
    #[prost(int64, tag = "2")]
    pub name: i64,
    /// System name (string index).
    #[prost(int64, tag = "3")]
    pub system_name: i64,
}

/// One sample to add: a stack with its blocked time, count and labels.
pub struct Input<'a> {
    /// Frames, innermost (leaf) first.
    pub stack: &'a [String],
    /// Blocked time, nanoseconds.
    pub blocked_ns: u64,
    /// Number of waits.
    pub count: u64,
    /// String labels (key, value).
    pub labels: Vec<(&'static str, &'a str)>,
    /// Numeric labels (key, value).
    pub numbers: Vec<(&'static str, i64)>,
}

/// Builds a profile, interning strings and functions.
pub struct Builder {
    profile: Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<String, u64>,
}

impl Builder {
    /// A profile of blocked time, from `start_ns` for `duration_ns`, its default
    /// sample type `blocked` or `count`.
    pub fn new(start_ns: u64, duration_ns: u64, default_count: bool) -> Builder {
        let mut builder =
            Builder { profile: Profile::default(), strings: HashMap::new(), functions: HashMap::new() };
        builder.string("");
        let blocked = ValueType { r#type: builder.string("blocked"), unit: builder.string("nanoseconds") };
        let count = ValueType { r#type: builder.string("count"), unit: builder.string("count") };
        builder.profile.default_sample_type = if default_count { count.r#type } else { blocked.r#type };
        builder.profile.period_type = Some(blocked.clone());
        builder.profile.period = 1;
        builder.profile.sample_type = vec![blocked, count];
        builder.profile.time_nanos = i64::try_from(start_ns).unwrap_or(i64::MAX);
        builder.profile.duration_nanos = i64::try_from(duration_ns).unwrap_or(i64::MAX);
        let filename = builder.string("[kernel]");
        builder.profile.mapping.push(Mapping { id: 1, filename, has_functions: true });
        let comment = builder.string("dstrace: time spent in uninterruptible sleep (D state)");
        builder.profile.comment.push(comment);
        builder
    }

    fn string(&mut self, text: &str) -> i64 {
        if let Some(&id) = self.strings.get(text) {
            return id;
        }
        let id = self.profile.string_table.len() as i64;
        self.profile.string_table.push(text.to_owned());
        self.strings.insert(text.to_owned(), id);
        id
    }

    /// The location of a function (one each: dstrace knows functions, not lines).
    fn location(&mut self, name: &str) -> u64 {
        if let Some(&id) = self.functions.get(name) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        let name_id = self.string(&escape(name));
        self.profile.function.push(Function { id, name: name_id, system_name: name_id });
        self.profile.location.push(Location { id, mapping_id: 1, line: vec![Line { function_id: id }] });
        self.functions.insert(name.to_owned(), id);
        id
    }

    /// Adds one sample.
    pub fn add(&mut self, input: &Input<'_>) {
        let location_id = if input.stack.is_empty() {
            vec![self.location("[stack lost]")]
        } else {
            input.stack.iter().map(|frame| self.location(frame)).collect()
        };
        let mut label = Vec::new();
        for &(key, value) in &input.labels {
            label.push(Label { key: self.string(key), str: self.string(&escape(value)), num: 0 });
        }
        for &(key, num) in &input.numbers {
            label.push(Label { key: self.string(key), str: 0, num });
        }
        self.profile.sample.push(Sample {
            location_id,
            value: vec![
                i64::try_from(input.blocked_ns).unwrap_or(i64::MAX),
                i64::try_from(input.count).unwrap_or(i64::MAX),
            ],
            label,
        });
    }

    /// The profile, encoded and gzip-compressed.
    pub fn finish(self) -> Result<Vec<u8>> {
        let encoded = self.profile.encode_to_vec();
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gzip.write_all(&encoded).context("cannot compress the profile")?;
        gzip.finish().context("cannot compress the profile")
    }

    /// The profile as built (tests).
    pub fn profile(&self) -> &Profile {
        &self.profile
    }
}

/// Decodes a gzip-compressed profile (tests, and checks of what was written).
pub fn decode(gzipped: &[u8]) -> Result<Profile> {
    use std::io::Read as _;
    let mut encoded = Vec::new();
    flate2::read::GzDecoder::new(gzipped).read_to_end(&mut encoded).context("not gzip")?;
    Profile::decode(encoded.as_slice()).context("not a profile.proto message")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_share_functions_and_strings() {
        let mut builder = Builder::new(1_000, 10_000, false);
        let stack = ["__schedule".to_owned(), "d_alloc_parallel".to_owned()];
        for pid in [1, 2] {
            builder.add(&Input {
                stack: &stack,
                blocked_ns: 5_000,
                count: 2,
                labels: vec![("comm", "st\nat;x")],
                numbers: vec![("pid", pid)],
            });
        }
        let bytes = builder.finish().unwrap();
        let profile = decode(&bytes).unwrap();
        assert_eq!(profile.sample.len(), 2);
        assert_eq!(profile.function.len(), 2);
        assert_eq!(profile.string_table[0], "");
        let name = |i: i64| profile.string_table[i as usize].as_str();
        let types: Vec<&str> = profile.sample_type.iter().map(|t| name(t.r#type)).collect();
        assert_eq!(types, ["blocked", "count"]);
        assert_eq!(name(profile.default_sample_type), "blocked");
        let leaf = profile.sample[0].location_id[0];
        assert_eq!(name(profile.function[leaf as usize - 1].name), "__schedule");
        assert_eq!(profile.sample[1].value, [5_000, 2]);
        let comm = &profile.sample[0].label[0];
        // Control characters are escaped as everywhere else (no terminal escape
        // sequence reaches `go tool pprof -tags`); `;` needs nothing in a label.
        assert_eq!((name(comm.key), name(comm.str)), ("comm", "st\\x0aat;x"));
        assert_eq!(profile.sample[1].label[1].num, 2);
    }
}
