//! Netlink attribute (TLV) writing, sans-IO: `struct nlattr` headers, 4-byte padding and
//! nested attributes, appended to a caller's buffer; plus nft's user data TLVs (one byte type,
//! one byte length, no padding) that ride inside `*_USERDATA` attributes. nf_tables reads every
//! integer attribute in network byte order (`nla_get_be32`), while the attribute headers
//! themselves are in host order. Nothing here knows about nf_tables objects.

use super::sys::NLA_F_NESTED;

/// Size of `struct nlattr` (`nla_len: u16`, `nla_type: u16`).
const NLA_HDRLEN: usize = 4;

/// A nested attribute or message grew past what its 16-bit length field can describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TooLong;

/// Pads `buf` with zeros to the next multiple of 4 (`NLA_ALIGN` / `NLMSG_ALIGN`).
pub(crate) fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// Appends one attribute with a raw payload. Payloads are at most a few hundred bytes (names,
/// keys), so the length always fits; nests are checked in [`nest_end`].
pub(crate) fn put(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = (NLA_HDRLEN + data.len()) as u16;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    pad(buf);
}

/// Appends a 32-bit attribute in network byte order (`NLA_U32` as nf_tables reads it).
pub(crate) fn put_be32(buf: &mut Vec<u8>, ty: u16, value: u32) {
    put(buf, ty, &value.to_be_bytes());
}

/// Appends a 64-bit attribute in network byte order (timeouts in milliseconds).
pub(crate) fn put_be64(buf: &mut Vec<u8>, ty: u16, value: u64) {
    put(buf, ty, &value.to_be_bytes());
}

/// Appends a NUL-terminated string attribute (`NLA_STRING` names).
pub(crate) fn put_strz(buf: &mut Vec<u8>, ty: u16, value: &str) {
    let mut data = Vec::with_capacity(value.len() + 1);
    data.extend_from_slice(value.as_bytes());
    data.push(0);
    put(buf, ty, &data);
}

/// Starts a nested attribute; returns where it starts, for [`nest_end`].
pub(crate) fn nest_start(buf: &mut Vec<u8>, ty: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    start
}

/// Closes a nested attribute by writing its final length.
pub(crate) fn nest_end(buf: &mut [u8], start: usize) -> Result<(), TooLong> {
    let len = u16::try_from(buf.len() - start).map_err(|_| TooLong)?;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    Ok(())
}

/// nft's user data blob: a list of `{ u8 type, u8 len, value }` entries with no padding, which
/// the kernel stores verbatim and `nft list` decodes (comments, set key byte order, …). Integers
/// in it are in host byte order, as nft writes them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Udata(Vec<u8>);

impl Udata {
    /// Appends one entry. Values are at most a 128-byte comment plus its NUL, or a nest of a few
    /// small entries, so the length always fits in a byte.
    pub(crate) fn put(&mut self, ty: u8, value: &[u8]) -> &mut Udata {
        self.0.push(ty);
        self.0.push(value.len() as u8);
        self.0.extend_from_slice(value);
        self
    }

    /// Appends a host-order `u32` entry.
    pub(crate) fn put_u32(&mut self, ty: u8, value: u32) -> &mut Udata {
        self.put(ty, &value.to_ne_bytes())
    }

    /// Appends a NUL-terminated string entry (nft's comments are stored with their NUL).
    pub(crate) fn put_strz(&mut self, ty: u8, value: &str) -> &mut Udata {
        let mut data = value.as_bytes().to_vec();
        data.push(0);
        self.put(ty, &data)
    }

    /// Appends an entry whose value is another user data blob.
    pub(crate) fn put_nest(&mut self, ty: u8, inner: &Udata) -> &mut Udata {
        let bytes = inner.0.clone();
        self.put(ty, &bytes)
    }

    /// Whether nothing was added.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The encoded blob.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nests_measured() {
        let mut buf = Vec::new();
        let nest = nest_start(&mut buf, 4);
        put_strz(&mut buf, 1, "t");
        put_be32(&mut buf, 2, 0x0102_0304);
        nest_end(&mut buf, nest).unwrap();
        assert_eq!(
            buf,
            [
                20, 0, 4, 0x80, // nest: len 20, type 4 | NLA_F_NESTED
                6, 0, 1, 0, b't', 0, 0, 0, // "t\0" padded to 4
                8, 0, 2, 0, 1, 2, 3, 4, // big-endian u32
            ]
        );
    }

    #[test]
    fn oversized_nests_are_refused() {
        let mut buf = Vec::new();
        let nest = nest_start(&mut buf, 1);
        buf.resize(70_000, 0);
        assert_eq!(nest_end(&mut buf, nest), Err(TooLong));
    }

    #[test]
    fn udata_is_unpadded_tlv() {
        let mut inner = Udata::default();
        inner.put_u32(0, 13).put(1, &[]);
        let mut udata = Udata::default();
        udata.put_strz(7, "x").put_nest(3, &inner);
        let mut expected = vec![7, 2, b'x', 0, 3, 8, 0, 4];
        expected.extend_from_slice(&13u32.to_ne_bytes());
        expected.extend_from_slice(&[1, 0]);
        assert_eq!(udata.bytes(), expected);
    }
}
