//! The kernel's BTF as the layout reads it: an index over the bytes of
//! `/sys/kernel/btf/vmlinux` (and a module's split BTF), not a copy of every type.
//!
//! Why not a BTF crate: btf-rs, used before, turns each of the 150,000 types and
//! their strings of a 6.18 vmlinux into owned objects and maps: about 90 ms to
//! parse and 20 ms to free, the largest part of dstrace's start, for the members
//! of some fifty structs. Here one pass records where each type begins and hashes
//! the names that are looked up (structs, unions, enums, typedefs, functions);
//! a type is decoded when asked for, from the bytes. The format is the kernel's
//! (Documentation/bpf/btf.rst, include/uapi/linux/btf.h), stable since 5.2.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash as _, Hasher as _};

use anyhow::{bail, ensure, Result};

/// `BTF_MAGIC`, as a little-endian kernel writes it.
const MAGIC: u16 = 0xeb9f;

/// The kinds of type (`BTF_KIND_*`) the layout tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `BTF_KIND_PTR`.
    Ptr,
    /// `BTF_KIND_STRUCT`.
    Struct,
    /// `BTF_KIND_UNION`.
    Union,
    /// `BTF_KIND_ENUM` (32-bit values).
    Enum,
    /// `BTF_KIND_ENUM64`.
    Enum64,
    /// `BTF_KIND_TYPEDEF`.
    Typedef,
    /// `BTF_KIND_VOLATILE`.
    Volatile,
    /// `BTF_KIND_CONST`.
    Const,
    /// `BTF_KIND_FUNC`.
    Func,
    /// `BTF_KIND_FUNC_PROTO`.
    FuncProto,
    /// Any other kind (an int, an array, a variable, ...), by its number.
    Other(u32),
}

impl Kind {
    fn of(number: u32) -> Kind {
        match number {
            2 => Kind::Ptr,
            4 => Kind::Struct,
            5 => Kind::Union,
            6 => Kind::Enum,
            8 => Kind::Typedef,
            9 => Kind::Volatile,
            10 => Kind::Const,
            12 => Kind::Func,
            13 => Kind::FuncProto,
            19 => Kind::Enum64,
            other => Kind::Other(other),
        }
    }

    /// Whether types of this kind are found by name ([`Btf::named`]).
    fn is_indexed(self) -> bool {
        matches!(self, Kind::Struct | Kind::Union | Kind::Enum | Kind::Enum64 | Kind::Typedef | Kind::Func)
    }

    /// The name of the kind, as the kernel's documentation writes it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ptr => "pointer",
            Kind::Struct => "struct",
            Kind::Union => "union",
            Kind::Enum | Kind::Enum64 => "enum",
            Kind::Typedef => "typedef",
            Kind::Volatile => "volatile",
            Kind::Const => "const",
            Kind::Func => "function",
            Kind::FuncProto => "function prototype",
            Kind::Other(_) => "type",
        }
    }
}

/// One BTF blob: vmlinux's, or a module's split against it (`base`).
pub struct Btf<'base> {
    bytes: Vec<u8>,
    big_endian: bool,
    /// Where the type section and the string section begin in `bytes`, and
    /// their lengths.
    types_at: usize,
    types_len: usize,
    strings_at: usize,
    strings_len: usize,
    /// The id of this blob's first type (1 for vmlinux: 0 is `void`).
    first_id: u32,
    /// The string offset this blob's strings begin at (0 for vmlinux).
    first_string: u32,
    /// Where each type begins, from the type section's start, by `id - first_id`.
    starts: Vec<u32>,
    /// `(hash of the name, id)` of the types [`Kind::is_indexed`], sorted.
    names: Vec<(u64, u32)>,
    base: Option<&'base Btf<'static>>,
}

/// One type, decoded from the bytes on demand.
#[derive(Clone, Copy)]
pub struct Type<'a> {
    /// Its id.
    pub id: u32,
    /// Its kind.
    pub kind: Kind,
    info: u32,
    /// `size_or_type`: the type it refers to, for a pointer, a typedef, a
    /// qualifier, a function.
    pub type_id: u32,
    name_off: u32,
    /// The bytes after its header (members, values, parameters).
    extra: &'a [u8],
    btf: &'a Btf<'a>,
}

/// A member of a struct or union.
pub struct Member<'a> {
    /// Its name (empty for an anonymous struct or union).
    pub name: &'a str,
    /// Its type.
    pub type_id: u32,
    /// Its offset in bits from the start of the struct.
    pub bit_offset: u32,
}

impl Btf<'static> {
    /// Indexes vmlinux's BTF.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Btf<'static>> {
        Btf::index(bytes, None)
    }
}

impl<'base> Btf<'base> {
    /// Indexes a module's BTF, split against `base` (its ids and string offsets
    /// continue `base`'s).
    pub fn from_split_bytes(bytes: Vec<u8>, base: &'base Btf<'static>) -> Result<Btf<'base>> {
        Btf::index(bytes, Some(base))
    }

    fn index(bytes: Vec<u8>, base: Option<&'base Btf<'static>>) -> Result<Btf<'base>> {
        ensure!(bytes.len() >= 24, "{} bytes: too short for a BTF header", bytes.len());
        let big_endian = match [bytes[0], bytes[1]] {
            m if u16::from_le_bytes(m) == MAGIC => false,
            m if u16::from_be_bytes(m) == MAGIC => true,
            m => bail!("not BTF (magic {m:02x?})"),
        };
        ensure!(bytes[2] == 1, "BTF version {} (1 is read)", bytes[2]);
        let mut btf = Btf {
            bytes,
            big_endian,
            types_at: 0,
            types_len: 0,
            strings_at: 0,
            strings_len: 0,
            first_id: base.map_or(1, |base| base.first_id + base.starts.len() as u32),
            first_string: base.map_or(0, |base| base.first_string + base.strings_len as u32),
            starts: Vec::new(),
            names: Vec::new(),
            base,
        };
        let field = |at: usize| btf.u32_at(at).map(|v| v as usize);
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (field(4)?, field(8)?, field(12)?, field(16)?, field(20)?);
        btf.types_at = hdr_len + type_off;
        btf.types_len = type_len;
        btf.strings_at = hdr_len + str_off;
        btf.strings_len = str_len;
        ensure!(
            btf.types_at.checked_add(type_len).is_some_and(|end| end <= btf.bytes.len())
                && btf.strings_at.checked_add(str_len).is_some_and(|end| end <= btf.bytes.len()),
            "BTF sections past the end of its {} bytes",
            btf.bytes.len()
        );
        let mut at = 0;
        while at < type_len {
            let start = btf.types_at + at;
            let info = btf.u32_at(start + 4)?;
            let vlen = (info & 0xffff) as usize;
            let extra = match (info >> 24) & 0x1f {
                1 | 14 | 17 => 4,             // int, var, decl tag
                3 => 12,                      // array
                4 | 5 | 15 | 19 => 12 * vlen, // struct, union, datasec, enum64
                6 | 13 => 8 * vlen,           // enum, function prototype
                0 | 2 | 7..=12 | 16 | 18 => 0,
                kind => bail!("BTF kind {kind} at byte {start} is not known"),
            };
            ensure!(at + 12 + extra <= type_len, "BTF type at byte {start} runs past its section");
            let kind = Kind::of((info >> 24) & 0x1f);
            let id = btf.first_id + btf.starts.len() as u32;
            if kind.is_indexed() {
                let name = btf.string(btf.u32_at(start)?);
                if !name.is_empty() {
                    btf.names.push((hash(name), id));
                }
            }
            btf.starts.push(at as u32);
            at += 12 + extra;
        }
        btf.names.sort_unstable();
        Ok(btf)
    }

    /// The type of id `id` (here or in the base).
    pub fn ty(&self, id: u32) -> Result<Type<'_>> {
        if id < self.first_id {
            return match self.base {
                Some(base) => base.ty(id),
                None => bail!("BTF type id {id} is void or unknown"),
            };
        }
        let Some(&at) = self.starts.get((id - self.first_id) as usize) else {
            bail!("BTF has no type id {id}")
        };
        let start = self.types_at + at as usize;
        let info = self.u32_at(start + 4)?;
        let next = self.starts.get((id - self.first_id) as usize + 1).map_or(self.types_len, |&n| n as usize);
        let end = self.types_at + next;
        Ok(Type {
            id,
            kind: Kind::of((info >> 24) & 0x1f),
            info,
            type_id: self.u32_at(start + 8)?,
            name_off: self.u32_at(start)?,
            extra: self.bytes.get(start + 12..end).unwrap_or_default(),
            btf: self,
        })
    }

    /// The types named `name` of the kinds looked up by name (structs, unions,
    /// enums, typedefs, functions): this blob's first, then its base's.
    pub fn named(&self, name: &str) -> Vec<Type<'_>> {
        let key = hash(name);
        let from = self.names.partition_point(|&(hash, _)| hash < key);
        let mut found: Vec<Type<'_>> = self.names[from..]
            .iter()
            .take_while(|&&(hash, _)| hash == key)
            .filter_map(|&(_, id)| self.ty(id).ok())
            .filter(|ty| ty.name() == name)
            .collect();
        if let Some(base) = self.base {
            found.extend(base.named(name));
        }
        found
    }

    /// The string at offset `at` of the string section (here or in the base),
    /// empty when there is none.
    fn string(&self, at: u32) -> &str {
        if at < self.first_string {
            return self.base.map_or("", |base| base.string(at));
        }
        let at = (at - self.first_string) as usize;
        let section = &self.bytes[self.strings_at..self.strings_at + self.strings_len];
        let Some(rest) = section.get(at..) else { return "" };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    fn u32_at(&self, at: usize) -> Result<u32> {
        let Some(bytes) = self.bytes.get(at..at + 4) else { bail!("BTF cut at byte {at}") };
        let bytes = [bytes[0], bytes[1], bytes[2], bytes[3]];
        Ok(if self.big_endian { u32::from_be_bytes(bytes) } else { u32::from_le_bytes(bytes) })
    }
}

impl<'a> Type<'a> {
    /// Its name (empty when anonymous).
    pub fn name(&self) -> &'a str {
        self.btf.string(self.name_off)
    }

    /// `vlen`: how many members, values or parameters it has.
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }

    /// The `i`-th `u32` of what follows its header.
    fn extra_u32(&self, i: usize) -> u32 {
        let Some(bytes) = self.extra.get(4 * i..4 * i + 4) else { return 0 };
        let bytes = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if self.btf.big_endian {
            u32::from_be_bytes(bytes)
        } else {
            u32::from_le_bytes(bytes)
        }
    }

    /// The members of a struct or union (none for another kind).
    pub fn members(&self) -> impl Iterator<Item = Member<'a>> + '_ {
        let count = if matches!(self.kind, Kind::Struct | Kind::Union) { self.vlen() } else { 0 };
        // With `kind_flag`, the offset's high 8 bits are a bit field's size.
        let mask = if self.info & (1 << 31) != 0 { 0x00ff_ffff } else { u32::MAX };
        (0..count).map(move |i| Member {
            name: self.btf.string(self.extra_u32(3 * i)),
            type_id: self.extra_u32(3 * i + 1),
            bit_offset: self.extra_u32(3 * i + 2) & mask,
        })
    }

    /// The named values of an enum (none for another kind; an `enum64`'s low 32
    /// bits).
    pub fn values(&self) -> impl Iterator<Item = (&'a str, u32)> + '_ {
        let (count, stride) = match self.kind {
            Kind::Enum => (self.vlen(), 2),
            Kind::Enum64 => (self.vlen(), 3),
            _ => (0, 2),
        };
        (0..count).map(move |i| (self.btf.string(self.extra_u32(stride * i)), self.extra_u32(stride * i + 1)))
    }

    /// How many parameters a function prototype takes (0 for another kind).
    pub fn params(&self) -> usize {
        if self.kind == Kind::FuncProto {
            self.vlen()
        } else {
            0
        }
    }
}

/// The hash names are indexed by.
fn hash(name: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    name.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob of these types (`[name_off, info, size_or_type, extra...]` as
    /// `u32`s) and these strings.
    fn blob(types: &[&[u32]], strings: &[u8]) -> Vec<u8> {
        let types: Vec<u8> = types.iter().flat_map(|t| t.iter()).flat_map(|v| v.to_le_bytes()).collect();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MAGIC.to_le_bytes());
        bytes.extend_from_slice(&[1, 0]);
        for v in [24, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes.extend_from_slice(&types);
        bytes.extend_from_slice(strings);
        bytes
    }

    const STRINGS: &[u8] = b"\0int\0task\0pid\0state\0bits\0e\0A\0B\0";
    const INT: u32 = 1;
    const TASK: u32 = 5;
    const PID: u32 = 10;
    const STATE: u32 = 14;
    const BITS: u32 = 20;
    const E: u32 = 25;

    fn kernel() -> Vec<u8> {
        blob(
            &[
                // 1: int (4 bytes)
                &[INT, 1 << 24, 4, 32],
                // 2: struct task { int pid; int state; int bits:3 (kind_flag) }
                &[TASK, (1 << 31) | (4 << 24) | 3, 12, PID, 1, 0, STATE, 1, 32, BITS, 1, (3 << 24) | 64],
                // 3: const struct task
                &[0, 10 << 24, 2],
                // 4: typedef task = const struct task
                &[TASK, 8 << 24, 3],
                // 5: enum e { A = 7, B = 9 }
                &[E, (6 << 24) | 2, 4, E + 2, 7, E + 4, 9],
            ],
            STRINGS,
        )
    }

    #[test]
    fn types_are_found_by_name_and_id_and_decoded_from_the_bytes() {
        let btf = Btf::from_bytes(kernel()).unwrap();
        let named = btf.named("task");
        let kinds: Vec<Kind> = named.iter().map(|ty| ty.kind).collect();
        assert_eq!(kinds.len(), 2);
        assert!(kinds.contains(&Kind::Struct) && kinds.contains(&Kind::Typedef));
        let task = named.iter().find(|ty| ty.kind == Kind::Struct).unwrap();
        let members: Vec<(&str, u32, u32)> =
            task.members().map(|m| (m.name, m.type_id, m.bit_offset)).collect();
        assert_eq!(members, [("pid", 1, 0), ("state", 1, 32), ("bits", 1, 64)], "a bit field's size cut off");
        let typedef = btf.ty(4).unwrap();
        assert_eq!((typedef.kind, typedef.type_id), (Kind::Typedef, 3));
        assert_eq!(btf.ty(3).unwrap().kind, Kind::Const);
        let values: Vec<(&str, u32)> = btf.named("e")[0].values().collect();
        assert_eq!(values, [("A", 7), ("B", 9)]);
        assert!(btf.named("pid").is_empty(), "members are not types");
        assert!(btf.named("nothing").is_empty());
        assert!(btf.ty(0).is_err() && btf.ty(6).is_err());
    }

    #[test]
    fn a_split_blob_continues_its_base() {
        let base = Btf::from_bytes(kernel()).unwrap();
        // 6: struct mod { task t } (the base's typedef 4), its name after the
        // base's strings.
        let first_string = STRINGS.len() as u32;
        let split = blob(&[&[first_string + 1, (4 << 24) | 1, 12, TASK, 4, 0]], b"\0mod\0");
        let split = Btf::from_split_bytes(split, &base).unwrap();
        let strukt = split.named("mod");
        assert_eq!(strukt.len(), 1);
        assert_eq!(strukt[0].id, 6);
        let member = strukt[0].members().next().unwrap();
        assert_eq!((member.name, member.type_id), ("task", 4));
        assert_eq!(split.ty(member.type_id).unwrap().kind, Kind::Typedef, "the base's type");
        assert_eq!(split.named("task").len(), 2, "the base's names too");
    }

    #[test]
    fn damaged_blobs_are_errors_not_panics() {
        assert!(Btf::from_bytes(Vec::new()).is_err());
        assert!(Btf::from_bytes(vec![0; 24]).is_err(), "no magic");
        let mut cut = kernel();
        cut.truncate(40);
        assert!(Btf::from_bytes(cut).is_err());
        let mut unknown = kernel();
        unknown[24 + 4 + 3] = 30; // the first type's kind
        assert!(Btf::from_bytes(unknown).is_err());
    }
}
