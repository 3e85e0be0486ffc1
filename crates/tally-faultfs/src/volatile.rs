//! The unsynced part of one file: the blocks written and the size set since its last fsync.
//!
//! A disk with a volatile write cache holds exactly this until it is told to flush: reads see
//! it, a power cut loses it. Kept per inode, so it follows the file through a rename.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The unit the overlay keeps. SQLite's pages are 4 KiB, so a page write is one block.
pub(crate) const BLOCK: u64 = 4096;

/// Writes and size changes of one file not yet on the backing file.
#[derive(Debug)]
pub(crate) struct Unsynced {
    /// The file's size as its users see it.
    size: u64,
    /// Bytes of the backing file at or past this offset are not the file's any more (it was
    /// truncated below them since the last sync), so they read as zeros.
    keep_below: u64,
    /// Whole blocks by index, each `BLOCK` long; what lies past `size` in the last one is zero.
    blocks: BTreeMap<u64, Box<[u8]>>,
}

impl Unsynced {
    /// Nothing unsynced yet over a backing file of `backing_len` bytes.
    pub(crate) fn new(backing_len: u64) -> Self {
        Self { size: backing_len, keep_below: backing_len, blocks: BTreeMap::new() }
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// How many bytes a power cut would lose (whole blocks, plus nothing for a size change).
    pub(crate) fn held_bytes(&self) -> u64 {
        self.blocks.len() as u64 * BLOCK
    }

    /// Block `index` as the file has it now, read from the backing file where not overlaid.
    fn load(&self, backing: &File, index: u64) -> io::Result<Box<[u8]>> {
        if let Some(block) = self.blocks.get(&index) {
            return Ok(block.clone());
        }
        let mut block = vec![0_u8; BLOCK as usize].into_boxed_slice();
        let start = index * BLOCK;
        let valid = self.keep_below.min(self.size).saturating_sub(start).min(BLOCK) as usize;
        let mut filled = 0;
        while filled < valid {
            match backing.read_at(&mut block[filled..valid], start + filled as u64) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(block)
    }

    pub(crate) fn write(&mut self, backing: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            let index = at / BLOCK;
            let within = (at % BLOCK) as usize;
            let take = ((BLOCK as usize) - within).min((end - at) as usize);
            let mut block = match self.blocks.remove(&index) {
                Some(block) => block,
                None => self.load(backing, index)?,
            };
            let from = (at - offset) as usize;
            block[within..within + take].copy_from_slice(&data[from..from + take]);
            self.blocks.insert(index, block);
            at += take as u64;
        }
        self.size = self.size.max(end);
        Ok(())
    }

    pub(crate) fn read(&self, backing: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let index = at / BLOCK;
            let within = (at % BLOCK) as usize;
            let take = ((BLOCK as usize) - within).min((end - at) as usize);
            let block = self.load(backing, index)?;
            out.extend_from_slice(&block[within..within + take]);
            at += take as u64;
        }
        Ok(out)
    }

    pub(crate) fn set_size(&mut self, size: u64) {
        if size < self.size {
            self.keep_below = self.keep_below.min(size);
            self.blocks.retain(|index, _| index * BLOCK < size);
            // The part of the last kept block past the new end must read as zeros if the file
            // grows again.
            if let Some(block) = self.blocks.get_mut(&(size / BLOCK)) {
                block[(size % BLOCK) as usize..].fill(0);
            }
        }
        self.size = size;
    }

    /// Puts everything onto `backing` (not yet synced: the caller syncs it).
    pub(crate) fn apply(&self, backing: &File) -> io::Result<()> {
        if backing.metadata()?.len() > self.keep_below {
            backing.set_len(self.keep_below)?;
        }
        for (index, block) in &self.blocks {
            let start = index * BLOCK;
            let len = self.size.saturating_sub(start).min(BLOCK) as usize;
            backing.write_all_at(&block[..len], start)?;
        }
        backing.set_len(self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backing(content: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("f");
        std::fs::write(&path, content).expect("write");
        let file = File::options().read(true).write(true).open(&path).expect("open");
        (dir, file)
    }

    #[test]
    fn reads_see_writes_over_the_backing_file_which_is_untouched_until_applied() {
        let (_dir, file) = backing(&[1; 10_000]);
        let mut unsynced = Unsynced::new(10_000);
        unsynced.write(&file, 4000, &[2; 200]).expect("write");
        unsynced.write(&file, 12_000, &[3; 10]).expect("write past the end");
        assert_eq!(unsynced.size(), 12_010);
        let all = unsynced.read(&file, 0, 20_000).expect("read");
        assert_eq!(all.len(), 12_010);
        assert!(all[..4000].iter().all(|&b| b == 1));
        assert!(all[4000..4200].iter().all(|&b| b == 2));
        assert!(all[4200..10_000].iter().all(|&b| b == 1));
        assert!(all[10_000..12_000].iter().all(|&b| b == 0), "the hole reads as zeros");
        assert!(all[12_000..].iter().all(|&b| b == 3));
        assert_eq!(file.metadata().expect("meta").len(), 10_000);

        unsynced.apply(&file).expect("apply");
        let mut on_disk = vec![0; 12_010];
        file.read_exact_at(&mut on_disk, 0).expect("read back");
        assert_eq!(on_disk, all);
    }

    #[test]
    fn a_truncation_hides_the_backing_bytes_past_it_even_when_the_file_grows_again() {
        let (_dir, file) = backing(&[7; 9000]);
        let mut unsynced = Unsynced::new(9000);
        unsynced.write(&file, 0, &[5; 10]).expect("write");
        unsynced.set_size(5);
        unsynced.set_size(9000);
        let all = unsynced.read(&file, 0, 9000).expect("read");
        assert!(all[..5].iter().all(|&b| b == 5));
        assert!(all[5..].iter().all(|&b| b == 0), "old bytes came back after a truncation");
        unsynced.apply(&file).expect("apply");
        let mut on_disk = vec![1; 9000];
        file.read_exact_at(&mut on_disk, 0).expect("read back");
        assert_eq!(on_disk, all);
    }
}
