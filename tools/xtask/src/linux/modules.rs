//! Which kernel modules the guest must load to reach its virtio-blk disk over PCI, in what order,
//! and their contents as plain `.ko` files (busybox `insmod` loads no compressed module).
//!
//! The drivers come from the kernel's config: each needed option that is `=m` names a module to
//! load; `=y` needs nothing; unset is an error. Dependencies come from `modules.dep` when the
//! tree has one (a depmod'ed tree); Debian's packages ship none (depmod runs at install), so
//! otherwise they come from each module's own `.modinfo` `depends=` entry, which is what depmod
//! itself starts from.

use super::apt;
use crate::Result;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Config options the guest's disk path needs, and the module that provides each.
pub(crate) const NEEDED_DRIVERS: &[(&str, &str)] = &[
    ("CONFIG_PCI_HOST_GENERIC", "pci_host_generic"),
    ("CONFIG_ARM_SMMU_V3", "arm_smmu_v3"),
    ("CONFIG_VIRTIO_PCI", "virtio_pci"),
    ("CONFIG_VIRTIO_BLK", "virtio_blk"),
];

/// Longest dependency chain followed; real ones are a handful deep.
const MAX_DEPTH: usize = 16;

/// How a kernel option is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tristate {
    BuiltIn,
    Module,
    Off,
}

/// The value of `option` in a kernel `.config`.
pub(crate) fn config_value(config: &str, option: &str) -> Tristate {
    for line in config.lines() {
        if let Some(value) = line
            .strip_prefix(option)
            .and_then(|rest| rest.strip_prefix('='))
        {
            return match value.trim() {
                "y" => Tristate::BuiltIn,
                "m" => Tristate::Module,
                _ => Tristate::Off,
            };
        }
    }
    Tristate::Off
}

/// The modules to load for [`NEEDED_DRIVERS`], before their dependencies are added.
pub(crate) fn wanted_modules(config: &str) -> Result<Vec<String>> {
    let mut wanted = Vec::new();
    for (option, module) in NEEDED_DRIVERS {
        match config_value(config, option) {
            Tristate::BuiltIn => {}
            Tristate::Module => wanted.push((*module).to_string()),
            Tristate::Off => {
                return Err(format!(
                    "the guest kernel lacks {option} (needed for virtio-blk over PCI)"
                )
                .into());
            }
        }
    }
    Ok(wanted)
}

/// A module name as the kernel knows it: the file name without `.ko[.xz|.zst|.gz]`, `-` as `_`.
pub(crate) fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))
        .unwrap_or(file);
    stem.replace('-', "_")
}

/// Orders `roots` and everything they depend on so that each module comes after its
/// dependencies, each once. Refuses a cycle and chains deeper than [`MAX_DEPTH`].
pub(crate) fn load_order(
    roots: &[String],
    mut dependencies_of: impl FnMut(&str) -> Result<Vec<String>>,
) -> Result<Vec<String>> {
    fn visit(
        name: &str,
        chain: &mut Vec<String>,
        order: &mut Vec<String>,
        dependencies_of: &mut dyn FnMut(&str) -> Result<Vec<String>>,
    ) -> Result<()> {
        if order.iter().any(|done| done == name) {
            return Ok(());
        }
        if chain.iter().any(|open| open == name) {
            return Err(
                format!("module dependency cycle: {} -> {name}", chain.join(" -> ")).into(),
            );
        }
        if chain.len() >= MAX_DEPTH {
            return Err(format!(
                "module dependencies deeper than {MAX_DEPTH}: {} -> {name}",
                chain.join(" -> ")
            )
            .into());
        }
        chain.push(name.to_string());
        for dependency in dependencies_of(name)? {
            visit(&dependency, chain, order, dependencies_of)?;
        }
        chain.pop();
        order.push(name.to_string());
        Ok(())
    }
    let mut order = Vec::new();
    for root in roots {
        visit(root, &mut Vec::new(), &mut order, &mut dependencies_of)?;
    }
    Ok(order)
}

/// Parses `modules.dep`: module name -> (path relative to the modules dir, dependency names).
pub(crate) fn parse_modules_dep(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(path, deps)| {
            let path = path.trim();
            let deps = deps.split_whitespace().map(module_name).collect();
            (module_name(path), (path.to_string(), deps))
        })
        .collect()
}

/// The `depends=` list of a module's `.modinfo` section (NUL-separated `key=value` strings).
pub(crate) fn modinfo_depends(modinfo: &[u8]) -> Vec<String> {
    modinfo
        .split(|&b| b == 0)
        .filter_map(|entry| entry.strip_prefix(b"depends="))
        .flat_map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(module_name)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// One module ready for the initramfs.
#[derive(Clone, Debug)]
pub(crate) struct LoadableModule {
    pub(crate) name: String,
    /// Path relative to `lib/modules/<release>`, without a compression suffix.
    pub(crate) relative_path: String,
    /// The plain `.ko`.
    pub(crate) contents: Vec<u8>,
}

/// A kernel's module tree.
#[derive(Debug)]
pub(crate) struct ModuleTree {
    dir: PathBuf,
    /// Name -> path relative to `dir`.
    paths: BTreeMap<String, String>,
    /// From `modules.dep`, when there is one.
    modules_dep: Option<BTreeMap<String, Vec<String>>>,
    /// Decompressed modules, by name.
    contents: BTreeMap<String, Vec<u8>>,
}

impl ModuleTree {
    /// Indexes `dir` (`lib/modules/<release>`).
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let mut tree = Self {
            dir: dir.to_path_buf(),
            paths: BTreeMap::new(),
            modules_dep: None,
            contents: BTreeMap::new(),
        };
        match std::fs::read_to_string(dir.join("modules.dep")) {
            Ok(text) => {
                let parsed = parse_modules_dep(&text);
                let mut dependencies = BTreeMap::new();
                for (name, (path, deps)) in parsed {
                    tree.paths.insert(name.clone(), path);
                    dependencies.insert(name, deps);
                }
                tree.modules_dep = Some(dependencies);
            }
            Err(_) => {
                let mut files = Vec::new();
                walk(dir, dir, &mut files, 0)?;
                for relative in files {
                    tree.paths.insert(module_name(&relative), relative);
                }
            }
        }
        Ok(tree)
    }

    /// `wanted` and their dependencies, in load order, decompressed.
    pub(crate) fn resolve(&mut self, wanted: &[String]) -> Result<Vec<LoadableModule>> {
        let order = load_order(wanted, |name| self.dependencies_of(name))?;
        order
            .into_iter()
            .map(|name| {
                let contents = self.contents_of(&name)?;
                let path = self.paths.get(&name).cloned().unwrap_or_default();
                let relative_path = [".xz", ".zst", ".gz"]
                    .iter()
                    .find_map(|ext| path.strip_suffix(ext))
                    .unwrap_or(&path)
                    .to_string();
                Ok(LoadableModule {
                    name,
                    relative_path,
                    contents,
                })
            })
            .collect()
    }

    fn dependencies_of(&mut self, name: &str) -> Result<Vec<String>> {
        if let Some(dependencies) = &self.modules_dep {
            return dependencies
                .get(name)
                .cloned()
                .ok_or_else(|| format!("module {name} is not in modules.dep").into());
        }
        let contents = self.contents_of(name)?;
        let file = object::File::parse(contents.as_slice())
            .map_err(|e| format!("module {name} is not an ELF file: {e}"))?;
        use object::{Object, ObjectSection};
        let modinfo = file
            .section_by_name(".modinfo")
            .ok_or_else(|| format!("module {name} has no .modinfo section"))?;
        Ok(modinfo_depends(modinfo.data()?))
    }

    fn contents_of(&mut self, name: &str) -> Result<Vec<u8>> {
        if let Some(contents) = self.contents.get(name) {
            return Ok(contents.clone());
        }
        let relative = self.paths.get(name).ok_or_else(|| {
            format!(
                "module {name} not found under {} (the guest needs it for virtio-blk)",
                self.dir.display()
            )
        })?;
        let contents = decompress(&self.dir.join(relative))?;
        self.contents.insert(name.to_string(), contents.clone());
        Ok(contents)
    }
}

/// Module files under `dir`, relative to `base` (bounded depth; kernel trees are ~8 deep).
fn walk(base: &Path, dir: &Path, files: &mut Vec<String>, depth: usize) -> Result<()> {
    if depth > 16 {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            walk(base, &path, files, depth + 1)?;
        } else if let Some(relative) = path.strip_prefix(base).ok().and_then(|p| p.to_str())
            && [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
                .iter()
                .any(|ext| relative.ends_with(ext))
        {
            files.push(relative.to_string());
        }
    }
    Ok(())
}

/// A module file's contents as a plain `.ko`.
pub(crate) fn decompress(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let (tool, package) = if name.ends_with(".ko.xz") {
        ("xz", "xz-utils")
    } else if name.ends_with(".ko.zst") {
        ("zstd", "zstd")
    } else if name.ends_with(".ko.gz") {
        ("gzip", "gzip")
    } else {
        return std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()).into());
    };
    let run = || Command::new(tool).arg("-dc").arg(path).output();
    let output = match run() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            apt::install_host_packages(&[package])?;
            run()
        }
        other => other,
    }
    .map_err(|e| format!("{tool}: {e}"))?;
    if !output.status.success() {
        return Err(format!("{tool} -dc {} failed ({})", path.display(), output.status).into());
    }
    Ok(output.stdout)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn config_options_read_as_builtin_module_or_off() {
        let config = "CONFIG_VIRTIO_PCI=y\nCONFIG_VIRTIO_PCI_LEGACY=m\nCONFIG_VIRTIO_BLK=m\n\
                      # CONFIG_ARM_SMMU_V3 is not set\nCONFIG_PCI_HOST_GENERIC=y\n";
        assert_eq!(config_value(config, "CONFIG_VIRTIO_PCI"), Tristate::BuiltIn);
        assert_eq!(config_value(config, "CONFIG_VIRTIO_BLK"), Tristate::Module);
        assert_eq!(config_value(config, "CONFIG_ARM_SMMU_V3"), Tristate::Off);
        assert!(wanted_modules(config).is_err());
        let config_6_12 = config.replace("# CONFIG_ARM_SMMU_V3 is not set", "CONFIG_ARM_SMMU_V3=y");
        assert_eq!(wanted_modules(&config_6_12).unwrap(), ["virtio_blk"]);
        let config_6_1 = config_6_12.replace("CONFIG_VIRTIO_PCI=y", "CONFIG_VIRTIO_PCI=m");
        assert_eq!(
            wanted_modules(&config_6_1).unwrap(),
            ["virtio_pci", "virtio_blk"]
        );
    }

    #[test]
    fn module_names_drop_directories_and_compression_and_use_underscores() {
        assert_eq!(
            module_name("kernel/drivers/virtio/virtio_pci.ko.xz"),
            "virtio_pci"
        );
        assert_eq!(
            module_name("kernel/drivers/iommu/virtio-iommu.ko.zst"),
            "virtio_iommu"
        );
        assert_eq!(module_name("virtio.ko"), "virtio");
    }

    /// A depmod-style tree as 6.1 has it: virtio_pci needs the modern and legacy helpers, which
    /// need virtio; virtio_blk needs virtio_ring and virtio.
    const MODULES_DEP: &str = "\
kernel/drivers/virtio/virtio.ko.xz:
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko.xz:
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz kernel/drivers/virtio/virtio_pci_legacy_dev.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.xz
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.xz
";

    fn lookup(
        table: &BTreeMap<String, (String, Vec<String>)>,
    ) -> impl FnMut(&str) -> Result<Vec<String>> + '_ {
        |name| {
            table
                .get(name)
                .map(|(_, deps)| deps.clone())
                .ok_or_else(|| format!("no {name}").into())
        }
    }

    #[test]
    fn modules_dep_resolves_to_a_load_order_with_each_module_once_after_its_dependencies() {
        let table = parse_modules_dep(MODULES_DEP);
        assert_eq!(
            table["virtio_blk"].0,
            "kernel/drivers/block/virtio_blk.ko.xz"
        );
        let roots = ["virtio_pci".to_string(), "virtio_blk".to_string()];
        let order = load_order(&roots, lookup(&table)).unwrap();
        assert_eq!(
            order,
            [
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_ring",
                "virtio",
                "virtio_pci",
                "virtio_blk"
            ]
        );
    }

    #[test]
    fn a_dependency_cycle_is_refused_not_followed_forever() {
        let table = parse_modules_dep("a.ko: b.ko\nb.ko: c.ko\nc.ko: a.ko\n");
        let error = load_order(&["a".to_string()], lookup(&table)).unwrap_err();
        assert!(
            error.to_string().contains("cycle: a -> b -> c -> a"),
            "{error}"
        );
        let table = parse_modules_dep("a.ko: a.ko\n");
        assert!(load_order(&["a".to_string()], lookup(&table)).is_err());
    }

    #[test]
    fn a_missing_module_is_an_error_naming_it() {
        let table = parse_modules_dep("a.ko: gone.ko\n");
        let error = load_order(&["a".to_string()], lookup(&table)).unwrap_err();
        assert!(error.to_string().contains("gone"));
    }

    #[test]
    fn depth_is_bounded() {
        let text: String = (0..40)
            .map(|i| format!("m{i}.ko: m{}.ko\n", i + 1))
            .collect();
        let table = parse_modules_dep(&(text + "m40.ko:\n"));
        let error = load_order(&["m0".to_string()], lookup(&table)).unwrap_err();
        assert!(error.to_string().contains("deeper than"));
    }

    #[test]
    fn modinfo_depends_lists_names_and_ignores_other_keys() {
        let modinfo = b"license=GPL\0depends=virtio_pci_modern_dev,virtio-ring\0name=virtio_pci\0";
        assert_eq!(
            modinfo_depends(modinfo),
            ["virtio_pci_modern_dev", "virtio_ring"]
        );
        assert!(modinfo_depends(b"depends=\0name=virtio_blk\0").is_empty());
    }

    #[test]
    fn a_synthetic_tree_with_modules_dep_resolves_from_disk() {
        let dir = std::env::temp_dir().join(format!("xtask-modules-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("kernel/drivers/virtio")).unwrap();
        std::fs::create_dir_all(dir.join("kernel/drivers/block")).unwrap();
        std::fs::write(
            dir.join("modules.dep"),
            MODULES_DEP.replace(".ko.xz", ".ko"),
        )
        .unwrap();
        for line in MODULES_DEP.lines() {
            let path = line.split(':').next().unwrap().replace(".ko.xz", ".ko");
            std::fs::write(dir.join(&path), module_name(&path)).unwrap();
        }
        let mut tree = ModuleTree::open(&dir).unwrap();
        let modules = tree.resolve(&["virtio_blk".to_string()]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["virtio_ring", "virtio", "virtio_blk"]);
        assert_eq!(
            modules[2].relative_path,
            "kernel/drivers/block/virtio_blk.ko"
        );
        assert_eq!(modules[2].contents, b"virtio_blk");
    }
}
