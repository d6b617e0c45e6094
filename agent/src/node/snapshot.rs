//! Snapshots taken before install, restored by a failed health check, `edgepatch rollback` or a
//! signed rollback order. Backends (config `snapshot`):
//!
//! - `btrfs`: a read-only snapshot of the root subvolume, kept beside it (outside it) in
//!   `<parent>/.edgepatch-snapshots/`. Restore swaps subvolumes: a writable copy of the snapshot
//!   takes the root subvolume's own path (and its place as default subvolume, if it had it), the
//!   replaced root becomes `<name>.replaced`. A scratch root is then back at once. For `/` the
//!   filesystem's top level is mounted at `/run/edgepatch/btrfs` for the operation, and the swap
//!   takes effect at the next boot, whether the node boots by `rootflags=subvol=@rootfs` (as
//!   Debian's installer and GRUB set it up), by `subvol=` in fstab or by the default subvolume;
//!   the kernel and initrd that GRUB reads from `/@rootfs/boot` are the restored ones too. The
//!   replaced root is deleted once the node runs from the restored one. A root that is the top
//!   level itself cannot be renamed: its copy is made the default subvolume instead. btrfs is
//!   only used when `state_dir` is outside the root subvolume (its own subvolume), so a restore
//!   does not rewind the agent's records.
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

    /// Resolve `auto` (or check an explicit choice) for this root and state_dir.
    pub fn choose(&self, configured: &str, state_dir: &Path) -> R<Backend> {
        let apart = !same_subvolume(&self.root, state_dir);
        let b = match configured {
            "auto" => {
                let btrfs = self.root_is_btrfs_subvolume();
                if btrfs && !apart {
                    log::warn!(
                        "root is on btrfs but state_dir {} is inside its subvolume: no btrfs \
                         snapshots until it has its own subvolume",
                        state_dir.display()
                    );
                }
                if btrfs && apart {
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
        if b == Backend::Btrfs && !apart {
            return Err(format!(
                "snapshot = btrfs but state_dir {} is inside the root subvolume; a restore would \
                 rewind it: mount its own subvolume there",
                state_dir.display()
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

    /// The root subvolume and the snapshot directory, as the btrfs commands reach them: a scratch
    /// root where it is; for `/`, through the top level mounted at [`TOP`] (until dropped).
    fn view(&self) -> R<View> {
        if is_scratch(&self.root) {
            let parent = self.root.parent().unwrap_or(Path::new("/"));
            return Ok(View {
                root: self.root.clone(),
                dir: parent.join(".edgepatch-snapshots"),
                top: None,
            });
        }
        let out = Cmd::new("findmnt")
            .args(["-n", "-v", "-o", "SOURCE,FSROOT", "-M", "/"])
            .run()?;
        let (dev, fsroot) = out
            .stdout
            .split_once(' ')
            .map(|(d, r)| (d.trim(), r.trim()))
            .ok_or_else(|| format!("findmnt printed no source for /: {}", out.last_line()))?;
        std::fs::create_dir_all(TOP).map_err(|e| format!("{TOP}: {e}"))?;
        Cmd::new("mount")
            .args(["-o", "subvolid=5", dev, TOP])
            .run()?;
        let (root, dir) = layout(Path::new(TOP), Path::new(fsroot));
        Ok(View {
            root,
            dir,
            top: Some(PathBuf::from(TOP)),
        })
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
                take(&self.view()?, &name)?;
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

    fn restore_btrfs(&self, name: &str) -> R<Restored> {
        swap(&self.view()?, name)
    }

    /// After the node booted the restored root: delete the replaced one (`/` only).
    pub fn forget_replaced(&self) -> R<()> {
        if is_scratch(&self.root) {
            return Ok(());
        }
        forget_replaced(&self.view()?, "");
        Ok(())
    }

    /// Delete a snapshot (pruning). Only btrfs snapshots are ours to delete; LVM and timeshift
    /// snapshots are removed with their own tools, which this calls too.
    pub fn delete(&self, id: &str) -> R<()> {
        let (backend, name) = id
            .split_once(':')
            .ok_or_else(|| format!("bad snapshot id {id:?}"))?;
        match Backend::from_name(backend) {
            Some(Backend::Btrfs) => {
                let p = self.view()?.dir.join(name);
                if p.exists() {
                    subvolume("delete", &p)?;
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

/// Where `/`'s btrfs top level is mounted while the agent works on snapshots of `/`.
const TOP: &str = "/run/edgepatch/btrfs";

/// The root subvolume and its snapshot directory; unmounts the top level when dropped.
struct View {
    root: PathBuf,
    dir: PathBuf,
    top: Option<PathBuf>,
}

impl Drop for View {
    fn drop(&mut self) {
        if let Some(top) = &self.top {
            if let Err(e) = Cmd::new("umount").arg(top).run() {
                log::warn!("cannot unmount {}: {e}", top.display());
            }
        }
    }
}

/// The root subvolume under `base` (`rel` is its path there; empty or `/`: `base` itself) and
/// the snapshot directory beside it (inside it only when it is `base` itself).
fn layout(base: &Path, rel: &Path) -> (PathBuf, PathBuf) {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    let root = base.join(rel);
    let dir = match root.parent() {
        Some(p) if rel != Path::new("") => p.join(".edgepatch-snapshots"),
        _ => root.join(".edgepatch-snapshots"),
    };
    (root, dir)
}

/// Are both paths in the same btrfs subvolume (or the same plain filesystem)?
fn same_subvolume(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev(),
        _ => false,
    }
}

/// A read-only snapshot of the root into the snapshot directory.
fn take(v: &View, name: &str) -> R<()> {
    std::fs::create_dir_all(&v.dir).map_err(|e| format!("{}: {e}", v.dir.display()))?;
    let dest = v.dir.join(name);
    if dest.exists() {
        // Left over from an interrupted run with the same label: replace it.
        subvolume("delete", &dest)?;
    }
    Cmd::new("btrfs")
        .args(["subvolume", "snapshot", "-r"])
        .arg(&v.root)
        .arg(&dest)
        .run()
        .map(|_| ())
}

/// Put the snapshot's writable copy in the root's place. Each step checks what is already done,
/// so a restore killed half-way completes on rerun.
fn swap(v: &View, name: &str) -> R<Restored> {
    let snap = v.dir.join(name);
    let writable = v.dir.join(format!("{name}.restore"));
    let replaced = v.dir.join(format!("{name}.replaced"));
    if v.top.as_ref() == Some(&v.root) {
        // `/` is the top level itself: it cannot be renamed; boot the copy as the default.
        if !writable.exists() {
            snapshot(&snap, &writable)?;
        }
        let id = rootid(&writable)?;
        Cmd::new("btrfs")
            .args(["subvolume", "set-default", &id])
            .arg(&v.root)
            .run()?;
        return Ok(Restored::AfterReboot);
    }
    if v.top.is_some() {
        forget_replaced(v, name);
    }
    if !snap.exists() && !writable.exists() {
        return Err(format!("snapshot {} is gone", snap.display()));
    }
    if !writable.exists() && !replaced.exists() {
        snapshot(&snap, &writable)?;
    }
    if writable.exists() {
        if v.root.exists() {
            std::fs::rename(&v.root, &replaced)
                .map_err(|e| format!("{}: {e}", v.root.display()))?;
        }
        std::fs::rename(&writable, &v.root).map_err(|e| format!("{}: {e}", writable.display()))?;
    }
    // A root booted as the default subvolume: the restored copy takes that place too.
    if replaced.exists() {
        let default = Cmd::new("btrfs")
            .args(["subvolume", "get-default"])
            .arg(&v.root)
            .run()?;
        if default_id(&default.stdout) == Some(rootid(&replaced)?) {
            let id = rootid(&v.root)?;
            Cmd::new("btrfs")
                .args(["subvolume", "set-default", &id])
                .arg(&v.root)
                .run()?;
        }
    }
    if v.top.is_some() {
        // The replaced root is the running system until the reboot.
        return Ok(Restored::AfterReboot);
    }
    if replaced.exists() {
        subvolume("delete", &replaced)?;
    }
    Ok(Restored::Now)
}

fn subvolume(what: &str, p: &Path) -> R<()> {
    Cmd::new("btrfs")
        .args(["subvolume", what])
        .arg(p)
        .run()
        .map(|_| ())
}

fn snapshot(from: &Path, to: &Path) -> R<()> {
    Cmd::new("btrfs")
        .args(["subvolume", "snapshot"])
        .arg(from)
        .arg(to)
        .run()
        .map(|_| ())
}

fn rootid(p: &Path) -> R<String> {
    let out = Cmd::new("btrfs")
        .args(["inspect-internal", "rootid"])
        .arg(p)
        .run()?;
    Ok(out.stdout.trim().to_string())
}

/// `btrfs subvolume get-default`: `ID 256 gen 9 top level 5 path @rootfs`, `ID 5 (FS_TREE)`.
fn default_id(out: &str) -> Option<String> {
    out.strip_prefix("ID ")?
        .split_whitespace()
        .next()
        .map(str::to_string)
}

/// Delete the roots earlier restores replaced, never the running one (deleting a mounted
/// subvolume empties it under the running system) nor `keep`'s.
fn forget_replaced(v: &View, keep: &str) {
    let Ok(running) = rootid(Path::new("/")) else {
        return;
    };
    let Ok(rd) = std::fs::read_dir(&v.dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        if name.strip_suffix(".replaced").is_none_or(|n| n == keep)
            || rootid(&p).map_or(true, |id| id == running)
        {
            continue;
        }
        match subvolume("delete", &p) {
            Ok(()) => log::info!("deleted {} (the root a restore replaced)", p.display()),
            Err(e) => log::warn!("cannot delete {}: {e}", p.display()),
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
    #[test]
    fn layout_puts_snapshots_beside_the_root_subvolume() {
        let top = Path::new("/run/edgepatch/btrfs");
        for (fsroot, root, dir) in [
            (
                "/@rootfs",
                "/run/edgepatch/btrfs/@rootfs",
                "/run/edgepatch/btrfs/.edgepatch-snapshots",
            ),
            (
                "/@",
                "/run/edgepatch/btrfs/@",
                "/run/edgepatch/btrfs/.edgepatch-snapshots",
            ),
            (
                "/sv/root",
                "/run/edgepatch/btrfs/sv/root",
                "/run/edgepatch/btrfs/sv/.edgepatch-snapshots",
            ),
            // `/` is the top level: the snapshots can only be inside it.
            (
                "/",
                "/run/edgepatch/btrfs",
                "/run/edgepatch/btrfs/.edgepatch-snapshots",
            ),
        ] {
            assert_eq!(
                layout(top, Path::new(fsroot)),
                (PathBuf::from(root), PathBuf::from(dir)),
                "{fsroot}"
            );
        }
        assert_eq!(
            default_id("ID 256 gen 9 top level 5 path @rootfs\n").as_deref(),
            Some("256")
        );
        assert_eq!(default_id("ID 5 (FS_TREE)\n").as_deref(), Some("5"));
        assert_eq!(default_id(""), None);
    }

    /// The restore of `/` on a real btrfs (a loop image, so root only): the snapshot's copy takes
    /// the root subvolume's path, which is what `rootflags=subvol=@rootfs` and fstab's `subvol=`
    /// name at the next boot, and its place as default subvolume; rerun, it changes nothing.
    #[test]
    fn swap_puts_the_snapshot_at_the_root_path_and_default() {
        let tmp = std::env::temp_dir().join(format!("ep-swap-{}", std::process::id()));
        let top = tmp.join("top");
        std::fs::create_dir_all(&top).unwrap();
        let img = tmp.join("img");
        let sh = |c: &str| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(c)
                .status()
                .is_ok_and(|s| s.success())
        };
        let t = top.display();
        if !sh(&format!(
            "truncate -s 200M {i} && mkfs.btrfs -q {i} >/dev/null 2>&1 && mount -o loop {i} {t}",
            i = img.display()
        )) {
            eprintln!("SKIP: cannot mount a loop btrfs image (needs root, loop devices, btrfs)");
            let _ = std::fs::remove_dir_all(&tmp);
            return;
        }
        let v = View {
            root: top.join("@rootfs"),
            dir: top.join(".edgepatch-snapshots"),
            top: Some(top.clone()), // unmounted when v is dropped
        };
        let r = v.root.display();
        assert!(sh(&format!(
            "btrfs -q subvolume create {r} && echo 1.1 > {r}/v && \
             btrfs subvolume set-default $(btrfs inspect-internal rootid {r}) {t}"
        )));
        take(&v, "edgepatch-5-1").unwrap();
        std::fs::write(v.root.join("v"), "1.3\n").unwrap();
        for run in 0..2 {
            assert_eq!(
                swap(&v, "edgepatch-5-1"),
                Ok(Restored::AfterReboot),
                "run {run}"
            );
            let read = |p: &Path| std::fs::read_to_string(p.join("v")).unwrap();
            assert_eq!(
                read(&v.root),
                "1.1\n",
                "run {run}: the pre-patch root at @rootfs"
            );
            assert_eq!(read(&v.dir.join("edgepatch-5-1.replaced")), "1.3\n");
            let default = Cmd::new("btrfs")
                .args(["subvolume", "get-default"])
                .arg(&top)
                .run()
                .unwrap();
            assert_eq!(
                default_id(&default.stdout),
                rootid(&v.root).ok(),
                "run {run}"
            );
        }
        assert!(!v.dir.join("edgepatch-5-1.restore").exists());
        drop(v);
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
