//! bincode 2's integers and length-prefixed fields (standard config), by
//! hand, for the hand-written path: writing into a buffer and reading
//! received bytes. Every read is checked; none panics or allocates.

use bytes::BufMut;

use super::DecodeError;

/// bincode 2's varint (standard config): below 251 one byte; else a marker
/// (251, 252, 253) and a u16, u32 or u64, little-endian.
#[inline]
pub(super) fn put_varint(out: &mut impl BufMut, v: u64) {
    if v < 251 {
        out.put_u8(v as u8);
    } else if v <= u64::from(u16::MAX) {
        out.put_u8(251);
        out.put_u16_le(v as u16);
    } else if v <= u64::from(u32::MAX) {
        out.put_u8(252);
        out.put_u32_le(v as u32);
    } else {
        out.put_u8(253);
        out.put_u64_le(v);
    }
}

/// The bytes [`put_varint`] writes for `v`.
pub(super) fn varint_len(v: u64) -> usize {
    match v {
        0..=250 => 1,
        251..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// A length-prefixed string or byte string.
#[inline]
pub(super) fn put_field(out: &mut impl BufMut, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.put_slice(bytes);
}

/// Reads received bytes from the front of `.0`: every read is checked, none
/// panics or allocates.
pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl<'a> Reader<'a> {
    /// The next `n` bytes.
    #[inline]
    pub(super) fn take(&mut self, n: u64) -> Result<&'a [u8], DecodeError> {
        let n = usize::try_from(n).ok().filter(|&n| n <= self.0.len());
        let n = n.ok_or_else(|| DecodeError::Malformed("truncated".into()))?;
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N as u64)?;
        Ok(bytes.try_into().unwrap_or([0; N]))
    }

    /// A varint for a u64 (what bincode accepts: any of the four widths).
    /// The one-byte form (counts, lengths, tags) is read inline; the rest
    /// out of line.
    #[inline(always)]
    pub(super) fn varint(&mut self) -> Result<u64, DecodeError> {
        match self.0.split_first() {
            Some((&b, rest)) if b <= 250 => {
                self.0 = rest;
                Ok(u64::from(b))
            }
            _ => self.varint_wide(),
        }
    }

    #[cold]
    #[inline(never)]
    fn varint_wide(&mut self) -> Result<u64, DecodeError> {
        let [marker] = self.array::<1>()?;
        Ok(match marker {
            b @ 0..=250 => u64::from(b),
            251 => u64::from(u16::from_le_bytes(self.array()?)),
            252 => u64::from(u32::from_le_bytes(self.array()?)),
            253 => u64::from_le_bytes(self.array()?),
            b => return Err(DecodeError::Malformed(format!("bad varint marker {b:#x}"))),
        })
    }

    /// A varint for a u32 (a variant index): the u64 width is refused.
    #[inline]
    pub(super) fn varint_u32(&mut self) -> Result<u32, DecodeError> {
        if self.0.first() == Some(&253) {
            return Err(DecodeError::Malformed("variant index over u32".into()));
        }
        Ok(self.varint()? as u32)
    }

    /// A length-prefixed field: its bytes.
    #[inline]
    pub(super) fn field(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.varint()?;
        self.take(len)
    }
}
