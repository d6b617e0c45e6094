//! Snapshots taken before install, restored by a failed health check, `edgepatch rollback` or a
//! signed rollback order. Backends (config `snapshot`):
//!
//! - `btrfs`: a read-only snapshot of the root subvolume. For a scratch root (root is not `/`)
//!   snapshots live beside it in `<parent>/.edgepatch-snapshots/` and restore swaps subvolumes
//!   (snapshot -> writable copy -> rename over root). For `/` they live in `/.snapshots/` and
//!   restore makes a writable copy the default subvolume; the node must reboot (status says so).
//! - `lvm-thin`: `lvcreate -s -n edgepatch-ID VG/LV` on the root LV; restore is
//!   `lvconvert --merge`, which completes on the next activation (reboot).
//! - `timeshift`: `timeshift --create --scripted --comments ...`; restore
//!   `timeshift --restore --snapshot NAME --scripted --yes` (reboot).
//! - `packages`: no filesystem snapshot; the pre-patch package versions recorded in the journal
//!   are put back from the package cache of the previous bundle. Works on any filesystem.
//! - `none`: nothing (install failures still restore package versions).
//! - `auto`: btrfs if root is a btrfs subvolume, else lvm-thin if root is a thin LV, else
//!   timeshift if installed, else packages. The choice is written to the journal and status.
//!
//! Snapshot ids are `<backend>:<name>`, so any later command knows how to restore one.

use crate::support::cmd::Cmd;
use std::path::{Path, PathBuf};

type R<T> = std::result::Result<T, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Btrfs,
    LvmThin,
    Timeshift,
    Packages,
    None,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Btrfs => "btrfs",
            Backend::LvmThin => "lvm-thin",
            Backend::Timeshift => "timeshift",
            Backend::Packages => "packages",
            Backend::None => "none",
        }
    }

    pub fn from_name(s: &str) -> Option<Backend> {
        [
            Backend::Btrfs,
            Backend::LvmThin,
            Backend::Timeshift,
            Backend::Packages,
            Backend::None,
        ]
        .into_iter()
        .find(|b| b.name() == s)
    }
}

/// What a restore left to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// The root is back to the snapshot now.
    Now,
    /// The restore completes at the next boot.
    AfterReboot,
}

pub struct Snapshots {
    pub root: PathBuf,
}

fn is_scratch(root: &Path) -> bool {
    root != Path::new("/")
}

impl Snapshots {
    pub fn new(root: &Path) -> Snapshots {
        Snapshots {
            root: root.to_path_buf(),
        }
    }

    /// Resolve `auto` (or check an explicit choice) for this root.
    pub fn choose(&self, configured: &str) -> R<Backend> {
        let b = match configured {
            "auto" => {
                if self.root_is_btrfs_subvolume() {
                    Backend::Btrfs
                } else if self.root_lv().is_ok() {
                    Backend::LvmThin
                } else if Cmd::new("timeshift")
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.ok())
                {
                    Backend::Timeshift
                } else {
                    Backend::Packages
                }
            }
            other => Backend::from_name(other)
                .ok_or_else(|| format!("unknown snapshot backend {other:?}"))?,
        };
        if b == Backend::Btrfs && !self.root_is_btrfs_subvolume() {
            return Err(format!(
                "snapshot = btrfs but {} is not a btrfs subvolume",
                self.root.display()
            ));
        }
        Ok(b)
    }

    fn root_is_btrfs_subvolume(&self) -> bool {
        Cmd::new("btrfs")
            .args(["subvolume", "show"])
            .arg(&self.root)
            .output()
            .is_ok_and(|o| o.ok())
    }

    fn btrfs_dir(&self) -> PathBuf {
        if is_scratch(&self.root) {
            self.root
                .parent()
                .unwrap_or(Path::new("/"))
                .join(".edgepatch-snapshots")
        } else {
            PathBuf::from("/.snapshots")
        }
    }

    /// The root logical volume as `VG/LV`, if root is on a thin LV.
    fn root_lv(&self) -> R<String> {
        let src = Cmd::new("findmnt")
            .args(["-n", "-o", "SOURCE", "--target"])
            .arg(&self.root)
            .run()?;
        let dev = src.stdout.trim().to_string();
        let out = Cmd::new("lvs")
            .args(["--noheadings", "-o", "vg_name,lv_name,segtype"])
            .arg(&dev)
            .run()?;
        let f: Vec<&str> = out.stdout.split_whitespace().collect();
        match f.as_slice() {
            [vg, lv, "thin"] => Ok(format!("{vg}/{lv}")),
            _ => Err(format!("{dev} is not a thin logical volume")),
        }
    }

    /// Take a snapshot; returns its id (`backend:name`).
    pub fn create(&self, backend: Backend, label: &str) -> R<String> {
        let name = format!("edgepatch-{label}");
        match backend {
            Backend::Btrfs => {
                let dir = self.btrfs_dir();
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                let dest = dir.join(&name);
                if dest.exists() {
                    // Left over from an interrupted run with the same label: replace it.
                    Cmd::new("btrfs")
                        .args(["subvolume", "delete"])
                        .arg(&dest)
                        .run()?;
                }
                Cmd::new("btrfs")
                    .args(["subvolume", "snapshot", "-r"])
                    .arg(&self.root)
                    .arg(&dest)
                    .run()?;
            }
            Backend::LvmThin => {
                let lv = self.root_lv()?;
                let vg = lv.split('/').next().unwrap_or_default().to_string();
                Cmd::new("lvcreate").args(["-s", "-n", &name, &lv]).run()?;
                return Ok(format!("lvm-thin:{vg}/{name}"));
            }
            Backend::Timeshift => {
                let out = Cmd::new("timeshift")
                    .args(["--create", "--scripted", "--comments", &name])
                    .run()?;
                // "Tagged snapshot '2026-11-26_04-30-00': ondemand" names the snapshot.
                let tagged = out
                    .stdout
                    .lines()
                    .find_map(|l| {
                        l.split('\'')
                            .nth(1)
                            .filter(|_| l.contains("Tagged snapshot"))
                    })
                    .ok_or_else(|| {
                        format!("timeshift did not name the snapshot: {}", out.last_line())
                    })?;
                return Ok(format!("timeshift:{tagged}"));
            }
            Backend::Packages | Backend::None => {}
        }
        Ok(format!("{}:{name}", backend.name()))
    }

    /// Restore a snapshot by id. `packages` ids are restored by the caller (it owns the package
    /// cache); here they return an error so they are never silently skipped.
    pub fn restore(&self, id: &str) -> R<Restored> {
        let (backend, name) = id
            .split_once(':')
            .ok_or_else(|| format!("bad snapshot id {id:?}"))?;
        match Backend::from_name(backend) {
            Some(Backend::Btrfs) => self.restore_btrfs(name),
            Some(Backend::LvmThin) => {
                Cmd::new("lvconvert").args(["--merge", name]).run()?;
                Ok(Restored::AfterReboot)
            }
            Some(Backend::Timeshift) => {
                Cmd::new("timeshift")
                    .args(["--restore", "--snapshot", name, "--scripted", "--yes"])
                    .run()?;
                Ok(Restored::AfterReboot)
            }
            _ => Err(format!("snapshot {id} is not a filesystem snapshot")),
        }
    }

    /// Each step checks what is already done, so a restore killed half-way completes on rerun.
    fn restore_btrfs(&self, name: &str) -> R<Restored> {
        let dir = self.btrfs_dir();
        let snap = dir.join(name);
        let writable = dir.join(format!("{name}.restore"));
        if !is_scratch(&self.root) {
            if !writable.exists() {
                Cmd::new("btrfs")
                    .args(["subvolume", "snapshot"])
                    .arg(&snap)
                    .arg(&writable)
                    .run()?;
            }
            let show = Cmd::new("btrfs")
                .args(["subvolume", "show"])
                .arg(&writable)
                .run()?;
            let id = show
                .stdout
                .lines()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix("Subvolume ID:")
                        .map(|v| v.trim().to_string())
                })
                .ok_or("btrfs subvolume show printed no Subvolume ID")?;
            Cmd::new("btrfs")
                .args(["subvolume", "set-default", &id, "/"])
                .run()?;
            return Ok(Restored::AfterReboot);
        }
        let replaced = dir.join(format!("{name}.replaced"));
        if !snap.exists() && !writable.exists() {
            return Err(format!("snapshot {} is gone", snap.display()));
        }
        if !writable.exists() && !replaced.exists() {
            Cmd::new("btrfs")
                .args(["subvolume", "snapshot"])
                .arg(&snap)
                .arg(&writable)
                .run()?;
        }
        if writable.exists() {
            if self.root.exists() {
                std::fs::rename(&self.root, &replaced)
                    .map_err(|e| format!("{}: {e}", self.root.display()))?;
            }
            std::fs::rename(&writable, &self.root)
                .map_err(|e| format!("{}: {e}", writable.display()))?;
        }
        if replaced.exists() {
            Cmd::new("btrfs")
                .args(["subvolume", "delete"])
                .arg(&replaced)
                .run()?;
        }
        Ok(Restored::Now)
    }

    /// Delete a snapshot (pruning). Only btrfs snapshots are ours to delete; LVM and timeshift
    /// snapshots are removed with their own tools, which this calls too.
    pub fn delete(&self, id: &str) -> R<()> {
        let (backend, name) = id
            .split_once(':')
            .ok_or_else(|| format!("bad snapshot id {id:?}"))?;
        match Backend::from_name(backend) {
            Some(Backend::Btrfs) => {
                let p = self.btrfs_dir().join(name);
                if p.exists() {
                    Cmd::new("btrfs")
                        .args(["subvolume", "delete"])
                        .arg(&p)
                        .run()?;
                }
                Ok(())
            }
            Some(Backend::LvmThin) => Cmd::new("lvremove").args(["-y", name]).run().map(|_| ()),
            Some(Backend::Timeshift) => Cmd::new("timeshift")
                .args(["--delete", "--snapshot", name, "--scripted"])
                .run()
                .map(|_| ()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_round_trip() {
        for b in [
            Backend::Btrfs,
            Backend::LvmThin,
            Backend::Timeshift,
            Backend::Packages,
            Backend::None,
        ] {
            assert_eq!(Backend::from_name(b.name()), Some(b));
        }
        assert!(Snapshots::new(Path::new("/nonexistent"))
            .restore("bogus")
            .is_err());
    }
}
