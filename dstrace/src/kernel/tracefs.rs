//! The kernel's classic tracepoints as tracefs describes them: which groups exist,
//! and where each field of an event's record lies (its `format` file).
//!
//! Classic tracepoints are used where a BTF tracepoint cannot be: a module without
//! BTF (the sunrpc module of Debian's 5.10), and events whose records carry strings
//! already copied (RPC program and procedure names). The record layout is read here
//! at start-up, never compiled in. tracefs is answered by the kernel itself: reading
//! it cannot block on a filesystem dstrace diagnoses.

use std::path::{Path, PathBuf};

/// Where tracefs is mounted: `/sys/kernel/tracing`, or its older place under debugfs.
pub fn root() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(PathBuf::from)
        .find(|root| root.join("events").is_dir())
}

/// Whether tracefs lists a group of tracepoints (`events/GROUP`).
pub fn has_group(group: &str) -> bool {
    root().is_some_and(|root| root.join("events").join(group).is_dir())
}

/// One field of an event's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Its name (`task_id`, `procname`, ...).
    pub name: String,
    /// Its type as the format file spells it (`unsigned int`, `__data_loc char[]`).
    pub kind: String,
    /// Byte offset in the record.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

/// The fields of event `group/event`, from its `format` file; an error says why
/// they cannot be known (no tracefs, no such event).
pub fn format(group: &str, event: &str) -> Result<Vec<Field>, String> {
    let root = root().ok_or("tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)")?;
    format_in(&root, group, event)
}

fn format_in(root: &Path, group: &str, event: &str) -> Result<Vec<Field>, String> {
    let path = root.join("events").join(group).join(event).join("format");
    let text = std::fs::read_to_string(&path).map_err(|err| {
        format!("this kernel has no tracepoint {group}:{event} ({}: {err})", path.display())
    })?;
    Ok(parse_format(&text))
}

/// The fields of a `format` file: lines such as
/// `field:unsigned int task_id;<TAB>offset:8;<TAB>size:4;<TAB>signed:0;` (fields separated by tabs).
pub fn parse_format(text: &str) -> Vec<Field> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.trim().split(';').map(str::trim);
            let declaration = parts.next()?.strip_prefix("field:")?;
            let mut offset = None;
            let mut size = None;
            for part in parts {
                if let Some(value) = part.strip_prefix("offset:") {
                    offset = value.parse().ok();
                } else if let Some(value) = part.strip_prefix("size:") {
                    size = value.parse().ok();
                }
            }
            // The name is the last word, before any array brackets (`char comm[16]`).
            let (kind, name) = declaration.rsplit_once(' ')?;
            let name = name.split('[').next()?.to_owned();
            Some(Field { name, kind: kind.to_owned(), offset: offset?, size: size? })
        })
        .collect()
}

/// The offset of field `name` of a record, checked to be `size` bytes.
pub fn offset_of(fields: &[Field], event: &str, name: &str, size: u32) -> Result<u32, String> {
    let field = fields
        .iter()
        .find(|field| field.name == name)
        .ok_or_else(|| format!("the tracepoint {event} has no field {name}"))?;
    if field.size != size {
        return Err(format!(
            "the field {name} of the tracepoint {event} is {} bytes, not {size}",
            field.size
        ));
    }
    Ok(field.offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sunrpc/rpc_request` of Debian's 6.1 kernel, as its tracefs printed it.
    const RPC_REQUEST: &str = "name: rpc_request
ID: 1607
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned int task_id;\toffset:8;\tsize:4;\tsigned:0;
\tfield:unsigned int client_id;\toffset:12;\tsize:4;\tsigned:0;
\tfield:int version;\toffset:16;\tsize:4;\tsigned:1;
\tfield:bool async;\toffset:20;\tsize:1;\tsigned:0;
\tfield:__data_loc char[] progname;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] procname;\toffset:28;\tsize:4;\tsigned:1;
\tfield:char comm[16];\toffset:32;\tsize:16;\tsigned:1;

print fmt: \"task:%u@%u %sv%d %s (%ssync)\", REC->task_id, REC->client_id
";

    #[test]
    fn reads_fields_of_a_format_file() {
        let fields = parse_format(RPC_REQUEST);
        assert_eq!(fields.len(), 11);
        assert_eq!(offset_of(&fields, "rpc_request", "task_id", 4), Ok(8));
        assert_eq!(offset_of(&fields, "rpc_request", "procname", 4), Ok(28));
        let procname = fields.iter().find(|field| field.name == "procname").unwrap();
        assert_eq!(procname.kind, "__data_loc char[]");
        assert_eq!(offset_of(&fields, "rpc_request", "comm", 16), Ok(32));
        assert!(offset_of(&fields, "rpc_request", "xid", 4).unwrap_err().contains("no field xid"));
        assert!(offset_of(&fields, "rpc_request", "version", 8).unwrap_err().contains("4 bytes, not 8"));
    }

    #[test]
    fn a_missing_event_says_which() {
        let dir = std::env::temp_dir().join(format!("dstrace-tracefs-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("events/sunrpc/rpc_request")).unwrap();
        std::fs::write(dir.join("events/sunrpc/rpc_request/format"), RPC_REQUEST).unwrap();
        assert_eq!(format_in(&dir, "sunrpc", "rpc_request").unwrap().len(), 11);
        let err = format_in(&dir, "sunrpc", "xprt_transmit").unwrap_err();
        assert!(err.starts_with("this kernel has no tracepoint sunrpc:xprt_transmit"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
