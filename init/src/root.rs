//! Mounts, modules and the hand-over to the real root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::mount::{MsFlags, mount};

use crate::log::warn;

fn mnt(
    src: &str,
    target: &str,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("creating {target}: {e}"))?;
    mount(Some(src), target, fstype, flags, data)
        .map_err(|e| format!("mounting {src} on {target}: {e}"))
}

/// /proc, /sys, /dev (devtmpfs: the kernel makes the device nodes) and /run.
pub fn mount_api_filesystems() -> Result<(), String> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mnt("proc", "/proc", Some("proc"), nosuid, None)?;
    mnt("sysfs", "/sys", Some("sysfs"), nosuid, None)?;
    mnt(
        "devtmpfs",
        "/dev",
        Some("devtmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mnt(
        "tmpfs",
        "/run",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
}

/// Loads the modules listed in `list` (paths inside the initramfs, dependencies first).
/// A module the kernel already has is fine; any other refusal stops the boot.
pub fn load_modules(list: &str) -> Result<usize, String> {
    let text = std::fs::read_to_string(list).map_err(|e| format!("reading {list}: {e}"))?;
    let mut n = 0;
    for path in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let image = std::fs::read(path).map_err(|e| format!("reading module {path}: {e}"))?;
        match nix::kmod::init_module(&image, c"") {
            Ok(()) => n += 1,
            Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(format!("loading module {path}: {e}")),
        }
    }
    Ok(n)
}

/// Mounts the verified device read-only (squashfs).
pub fn mount_root(dev: &Path, at: &str) -> Result<(), String> {
    let dev = dev.to_string_lossy();
    mnt(
        &dev,
        at,
        Some("squashfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None,
    )
}

/// Writable layers over the read-only root, kept in `state` (the state partition, or
/// /run when there is none): /etc, /opt, /home and /root as overlays (upper layer
/// writable), /var as a copy of the image's /var made on first boot (containerd's overlay
/// snapshots cannot live on an overlay).
pub fn writable_layers(sysroot: &str, state: &Path) -> Result<(), String> {
    let state = state.to_string_lossy();
    for dir in ["etc", "opt", "home", "root"] {
        let lower = format!("{sysroot}/{dir}");
        let upper = format!("{state}/{dir}.upper");
        let work = format!("{state}/{dir}.work");
        for d in [&lower, &upper, &work] {
            std::fs::create_dir_all(d).map_err(|e| format!("creating {d}: {e}"))?;
        }
        mnt(
            "overlay",
            &lower,
            Some("overlay"),
            MsFlags::MS_NODEV,
            Some(&format!("lowerdir={lower},upperdir={upper},workdir={work}")),
        )?;
    }
    let var = format!("{state}/var");
    if !Path::new(&var).exists() {
        copy_tree(Path::new(&format!("{sysroot}/var")), Path::new(&var))?;
    }
    mnt(
        &var,
        &format!("{sysroot}/var"),
        None,
        MsFlags::MS_BIND,
        None,
    )
}

/// Copies a directory tree with modes, owners and symlinks.
fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let err = |p: &Path, e: std::io::Error| format!("copying {}: {e}", p.display());
    let meta = std::fs::symlink_metadata(from).map_err(|e| err(from, e))?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(from).map_err(|e| err(from, e))?;
        std::os::unix::fs::symlink(target, to).map_err(|e| err(to, e))?;
    } else if ft.is_dir() {
        std::fs::create_dir(to).map_err(|e| err(to, e))?;
        let mut names: Vec<_> = std::fs::read_dir(from)
            .map_err(|e| err(from, e))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            copy_tree(&from.join(&n), &to.join(&n))?;
        }
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| err(to, e))?;
    } else if ft.is_file() {
        std::fs::copy(from, to).map_err(|e| err(from, e))?;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| err(to, e))?;
    } else {
        warn(&format!("skipping special file {}", from.display()));
        return Ok(());
    }
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid())).map_err(|e| err(to, e))
}

/// Deletes the initramfs's own files (they would pin memory forever), staying on the
/// initramfs filesystem.
fn delete_initramfs(dir: &Path, dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.dev() != dev {
            continue;
        }
        if m.is_dir() {
            delete_initramfs(&p, dev);
            let _ = std::fs::remove_dir(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Moves the API filesystems into `sysroot`, makes it `/` and executes `init` there.
pub fn switch_root(sysroot: &str, init: &str) -> Result<(), String> {
    let target = format!("{sysroot}{init}");
    if std::fs::symlink_metadata(&target).is_err() && std::fs::metadata(&target).is_err() {
        return Err(format!("{init} does not exist in the new root"));
    }
    for m in ["/dev", "/proc", "/sys", "/run"] {
        mnt(m, &format!("{sysroot}{m}"), None, MsFlags::MS_MOVE, None)?;
    }
    std::env::set_current_dir(sysroot).map_err(|e| format!("chdir {sysroot}: {e}"))?;
    if let Ok(m) = std::fs::symlink_metadata("/") {
        delete_initramfs(Path::new("/"), m.dev());
    }
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("moving {sysroot} to /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    use std::os::unix::process::CommandExt;
    let e = std::process::Command::new(init).exec();
    Err(format!("executing {init}: {e}"))
}
