//! hostPath volumes: the kubelet's checks of their `type`, and `--allowed-host-paths` held
//! against `..`, symbolic links and races. With an allow-list, the path is resolved beneath its
//! allowed directory by the kernel (`openat2` with `RESOLVE_BENEATH`), missing directories of a
//! `DirectoryOrCreate` volume are made one at a time beneath it, and the directory stays open:
//! the guest is given that open directory (`/proc/<agent pid>/fd/N`, which a runtime worker of
//! the same user opens as well), so a symbolic link one guest makes in an allowed directory, or
//! a rename after the check, cannot lead another pod out.

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// A hostPath volume's directory, ready to be given to a guest.
#[derive(Debug)]
pub struct HostDir {
    /// Held open while the pod has the volume, when it was resolved beneath an allowed root.
    held: Option<OwnedFd>,
    path: PathBuf,
}

impl HostDir {
    /// The path a runtime opens to reach the directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the directory is held open (resolved beneath an allowed root).
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }
}

/// Checks a hostPath volume as the kubelet does for its `type`, and against the node's
/// `--allowed-host-paths` (`allowed`; empty: any); only directories can be given to a WASI
/// guest.
pub fn open(path: &str, kind: &str, allowed: &[PathBuf]) -> Result<HostDir, String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!("hostPath {path:?} must be an absolute path"));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(format!("hostPath {path:?} must not contain '..'"));
    }
    if !matches!(
        kind,
        "" | "DirectoryOrCreate"
            | "Directory"
            | "FileOrCreate"
            | "File"
            | "Socket"
            | "CharDevice"
            | "BlockDevice"
    ) {
        return Err(format!(
            "hostPath type {kind:?} is not a Kubernetes hostPath type"
        ));
    }
    if allowed.is_empty() {
        if kind == "DirectoryOrCreate" {
            std::fs::create_dir_all(p).map_err(|e| format!("creating {path}: {e}"))?;
        }
        let file_type = std::fs::metadata(p)
            .ok()
            .map(|m| FileType::from_raw_mode(std::os::unix::fs::MetadataExt::mode(&m)));
        check_type(path, kind, file_type)?;
        return Ok(HostDir {
            held: None,
            path: p.to_path_buf(),
        });
    }
    let Some((root, relative)) = allowed
        .iter()
        .find_map(|root| Some((root, p.strip_prefix(root).ok()?)))
    else {
        let list: Vec<String> = allowed.iter().map(|a| a.display().to_string()).collect();
        return Err(format!(
            "hostPath {path} is not allowed on this node: it is outside --allowed-host-paths ({})",
            list.join(", ")
        ));
    };
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("opening --allowed-host-paths {}: {e}", root.display()))?;
    let escaped = || {
        format!(
            "hostPath {path} leads outside --allowed-host-paths ({}) through a symbolic link; it is refused",
            root.display()
        )
    };
    let fd = match beneath(&root_fd, relative) {
        Err(rustix::io::Errno::NOENT) if kind == "DirectoryOrCreate" => {
            create_beneath(&root_fd, relative).map_err(|e| match e {
                rustix::io::Errno::XDEV => escaped(),
                e => format!("creating {path}: {e}"),
            })?;
            beneath(&root_fd, relative)
        }
        other => other,
    };
    let fd = match fd {
        Ok(fd) => Some(fd),
        Err(rustix::io::Errno::XDEV | rustix::io::Errno::LOOP) => return Err(escaped()),
        Err(rustix::io::Errno::NOENT) => None,
        Err(rustix::io::Errno::NOSYS) => {
            return Err(format!(
                "hostPath {path}: this kernel lacks openat2 (Linux 5.6), which --allowed-host-paths needs"
            ));
        }
        Err(e) => return Err(format!("opening hostPath {path}: {e}")),
    };
    let file_type = fd
        .as_ref()
        .and_then(|fd| rustix::fs::fstat(fd).ok())
        .map(|stat| FileType::from_raw_mode(stat.st_mode));
    check_type(path, kind, file_type)?;
    let fd = fd.expect("a directory was found");
    Ok(HostDir {
        path: PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            fd.as_raw_fd()
        )),
        held: Some(fd),
    })
}

/// Opens `relative` beneath `root` (no `..`, no absolute or escaping symbolic links).
fn beneath(root: &OwnedFd, relative: &Path) -> rustix::io::Result<OwnedFd> {
    let relative = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    rustix::fs::openat2(
        root,
        relative,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )
}

/// Makes the missing directories of `relative` beneath `root`, each in its parent opened
/// beneath `root`, so that no symbolic link can redirect the creation.
fn create_beneath(root: &OwnedFd, relative: &Path) -> rustix::io::Result<()> {
    let mut parent = PathBuf::new();
    for component in relative.components() {
        let parent_fd = beneath(root, &parent)?;
        match rustix::fs::mkdirat(
            &parent_fd,
            component.as_os_str(),
            Mode::from_raw_mode(0o755),
        ) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e),
        }
        parent.push(component);
    }
    Ok(())
}

/// The kubelet's check of a hostPath `type` against what is there, then this node's: only a
/// directory can be given to a WASI guest.
fn check_type(path: &str, kind: &str, found: Option<FileType>) -> Result<(), String> {
    let expect = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!(
                "hostPath type check failed: {path} is not a {what}"
            ))
        }
    };
    match kind {
        "Directory" => expect(found == Some(FileType::Directory), "directory"),
        "File" => expect(found == Some(FileType::RegularFile), "file"),
        "Socket" => expect(found == Some(FileType::Socket), "socket"),
        "CharDevice" => expect(found == Some(FileType::CharacterDevice), "character device"),
        "BlockDevice" => expect(found == Some(FileType::BlockDevice), "block device"),
        _ => Ok(()),
    }?;
    if found != Some(FileType::Directory) {
        return Err(format!(
            "hostPath {path} is not a directory: a WASI guest can only be given directories (types File, FileOrCreate, Socket, CharDevice and BlockDevice cannot be mounted into a wasm pod)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_are_checked_by_type_and_against_the_allowed_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_string_lossy().into_owned();
        assert!(open(&path, "Directory", &[]).is_ok());
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let file = file.to_string_lossy().into_owned();
        let refused = open(&file, "File", &[]).unwrap_err();
        assert!(refused.contains("only be given directories"), "{refused}");
        let wrong = open(&file, "Directory", &[]).unwrap_err();
        assert!(wrong.contains("is not a directory"), "{wrong}");
        let outside = open(&path, "", &[PathBuf::from("/nonexistent")]).unwrap_err();
        assert!(outside.contains("--allowed-host-paths"), "{outside}");
        let root = dir.path().canonicalize().unwrap();
        let held = open(&root.to_string_lossy(), "", std::slice::from_ref(&root)).unwrap();
        assert!(held.is_held());
        assert!(open(&path, "Bogus", &[]).is_err());
    }

    #[test]
    fn the_allow_list_holds_against_dot_dot_links_and_renames() {
        let base = tempfile::tempdir().unwrap();
        let base = base.path().canonicalize().unwrap();
        let allowed = base.join("allowed");
        let secret = base.join("secret");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(secret.join("key"), "s3cret").unwrap();
        let roots = [allowed.clone()];
        let at = |p: &Path| p.to_string_lossy().into_owned();

        // A path not yet there, climbing out with `..`, is refused before anything is made.
        let climb = format!("{}/../secret/new", allowed.display());
        assert!(
            open(&climb, "DirectoryOrCreate", &roots)
                .unwrap_err()
                .contains("'..'")
        );
        assert!(!secret.join("new").exists());

        // A link a guest made inside the allowed directory does not lead out of it...
        std::os::unix::fs::symlink(&secret, allowed.join("link")).unwrap();
        let through = open(&at(&allowed.join("link")), "", &roots).unwrap_err();
        assert!(through.contains("symbolic link"), "{through}");
        // ...nor can one redirect a directory that is being made.
        let made = open(&at(&allowed.join("link/sub")), "DirectoryOrCreate", &roots).unwrap_err();
        assert!(made.contains("symbolic link"), "{made}");
        assert!(!secret.join("sub").exists());

        // A link that stays inside is followed; DirectoryOrCreate makes what is missing.
        std::fs::create_dir_all(allowed.join("data")).unwrap();
        std::os::unix::fs::symlink("data", allowed.join("alias")).unwrap();
        assert!(open(&at(&allowed.join("alias")), "Directory", &roots).is_ok());
        let created = open(&at(&allowed.join("a/b")), "DirectoryOrCreate", &roots).unwrap();
        assert!(allowed.join("a/b").is_dir());

        // The directory is held: renaming it away and putting a link in its place afterwards
        // changes nothing for the pod that has it.
        std::fs::rename(allowed.join("a/b"), allowed.join("a/moved")).unwrap();
        std::os::unix::fs::symlink(&secret, allowed.join("a/b")).unwrap();
        std::fs::write(allowed.join("a/moved/mine"), "x").unwrap();
        let seen: Vec<String> = std::fs::read_dir(created.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(seen, ["mine"], "the held directory, not the link's target");
    }
}
