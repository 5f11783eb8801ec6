//! Finding CUDA before touching it.
//!
//! cudarc opens `libcuda`, `libnvrtc` and `libcublas` lazily, on the first call into each, and *panics* when a
//! library or one of its symbols is missing. So [`probe`] looks for each library itself first, with the same
//! candidate names cudarc will ask the dynamic loader for, then in the usual install folders (a CUDA toolkit,
//! the NVIDIA pip wheels of a Python environment) — a library found there by path is kept open, so that
//! cudarc's later `dlopen` of its bare name resolves to it (the loader matches an already loaded object by its
//! soname). It checks that the symbols the backend calls exist, that the driver speaks CUDA 13.0 or newer (the
//! bindings are CUDA 13.0's) and that a device is there, and reports any failure as a [`CudaUnavailable`].

use std::ffi::{c_int, c_uint};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libloading::Library;

/// The CUDA version the bindings were generated for (`cuda-13000`), as `cuDriverGetVersion` reports it.
pub const REQUIRED_DRIVER_VERSION: i32 = 13000;

/// Why the CUDA backend cannot run on this machine.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CudaUnavailable {
    #[error(
        "the {library} library was not found (tried {tried}; set LD_LIBRARY_PATH or CUDA_HOME to the folder \
         that holds it)"
    )]
    LibraryMissing { library: &'static str, tried: String },
    #[error("{library} ({path}) lacks the symbol {symbol}: too old a CUDA?")]
    SymbolMissing {
        library: &'static str,
        path: String,
        symbol: &'static str,
    },
    #[error("the NVIDIA driver supports CUDA {}.{}, the CUDA backend needs {}.{} or newer", .found / 1000, .found % 1000 / 10, REQUIRED_DRIVER_VERSION / 1000, REQUIRED_DRIVER_VERSION % 1000 / 10)]
    DriverTooOld { found: i32 },
    #[error("the CUDA driver failed to initialise ({call} returned error {code}): is a GPU visible to this process?")]
    DriverInit { call: &'static str, code: i32 },
    #[error("no CUDA device found")]
    NoDevice,
}

/// What [`probe`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaProbe {
    /// Where each library was opened from: `(library, name or path)`.
    pub libraries: Vec<(&'static str, String)>,
    /// `cuDriverGetVersion`, e.g. `13000` for CUDA 13.0.
    pub driver_version: i32,
    pub device_count: i32,
}

/// One library the backend needs: its cudarc name (for the candidate list), the symbols it must export, and
/// the soname stems to look for in install folders.
struct Needed {
    library: &'static str,
    cudarc_names: &'static [&'static str],
    file_stems: &'static [&'static str],
    symbols: &'static [&'static str],
    /// Libraries it opens itself by bare name (NVRTC's builtins): preloaded from the same folder when the
    /// library was found by path, so that its own `dlopen` finds them.
    companions: &'static [&'static str],
}

const DRIVER: Needed = Needed {
    library: "CUDA driver (libcuda)",
    cudarc_names: &["cuda", "nvcuda"],
    file_stems: &["libcuda.so"],
    symbols: &[
        "cuInit",
        "cuDriverGetVersion",
        "cuDeviceGetCount",
        "cuDeviceGet",
        "cuDeviceGetAttribute",
        "cuDevicePrimaryCtxRetain",
        "cuCtxSetCurrent",
        "cuMemAllocAsync",
        "cuMemAlloc_v2",
        "cuMemFreeAsync",
        "cuMemFree_v2",
        "cuMemcpyHtoDAsync_v2",
        "cuMemcpyDtoHAsync_v2",
        "cuMemcpyDtoDAsync_v2",
        "cuMemsetD8Async",
        "cuModuleLoadData",
        "cuModuleGetFunction",
        "cuFuncSetAttribute",
        "cuLaunchKernel",
        "cuStreamSynchronize",
    ],
    companions: &[],
};

const NVRTC: Needed = Needed {
    library: "NVRTC (libnvrtc)",
    cudarc_names: &["nvrtc"],
    file_stems: &["libnvrtc.so"],
    symbols: &[
        "nvrtcCreateProgram",
        "nvrtcCompileProgram",
        "nvrtcDestroyProgram",
        "nvrtcGetProgramLogSize",
        "nvrtcGetProgramLog",
        "nvrtcGetCUBINSize",
        "nvrtcGetCUBIN",
        "nvrtcGetPTXSize",
        "nvrtcGetPTX",
        "nvrtcVersion",
    ],
    companions: &["libnvrtc-builtins.so"],
};

const CUBLAS_LT: Needed = Needed {
    library: "cuBLASLt (libcublasLt)",
    cudarc_names: &["cublasLt"],
    file_stems: &["libcublasLt.so"],
    symbols: &["cublasLtCreate"],
    companions: &[],
};

const CUBLAS: Needed = Needed {
    library: "cuBLAS (libcublas)",
    cudarc_names: &["cublas"],
    file_stems: &["libcublas.so"],
    symbols: &[
        "cublasCreate_v2",
        "cublasDestroy_v2",
        "cublasSetStream_v2",
        "cublasSetMathMode",
        "cublasSgemm_v2",
    ],
    companions: &[],
};

/// Libraries opened by path, kept open for the life of the process (see the module documentation).
static OPENED: OnceLock<Result<CudaProbe, CudaUnavailable>> = OnceLock::new();

/// Folders where CUDA libraries live besides the loader's own search path.
fn install_folders() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT", "CUDA_TOOLKIT_ROOT_DIR"] {
        if let Some(root) = std::env::var_os(var) {
            let root = PathBuf::from(root);
            dirs.push(root.join("lib64"));
            dirs.push(root.join("lib"));
            dirs.push(root.join("targets/x86_64-linux/lib"));
        }
    }
    for fixed in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/local/nvidia/lib64",
        "/usr/local/nvidia/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
    ] {
        dirs.push(PathBuf::from(fixed));
    }
    // NVIDIA's pip wheels (PyTorch's CUDA libraries): <prefix>/lib/python3.*/site-packages/nvidia/*/lib.
    let mut prefixes: Vec<PathBuf> = ["/usr", "/usr/local", "/opt/conda"].iter().map(PathBuf::from).collect();
    if let Ok(entries) = std::fs::read_dir("/opt") {
        for e in entries.flatten() {
            prefixes.push(e.path().join(".venv"));
            prefixes.push(e.path());
        }
    }
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        prefixes.push(PathBuf::from(v));
    }
    for prefix in prefixes {
        for lib in ["lib", "lib64"] {
            let Ok(pythons) = std::fs::read_dir(prefix.join(lib)) else {
                continue;
            };
            for py in pythons.flatten() {
                if !py.file_name().to_string_lossy().starts_with("python3") {
                    continue;
                }
                for site in ["site-packages", "dist-packages"] {
                    let nvidia = py.path().join(site).join("nvidia");
                    let Ok(pkgs) = std::fs::read_dir(&nvidia) else {
                        continue;
                    };
                    for pkg in pkgs.flatten() {
                        dirs.push(pkg.path().join("lib"));
                    }
                }
            }
        }
    }
    dirs
}

/// Versioned files `stem.N` (highest first), then `stem` itself, in `dir`.
fn files_in(dir: &Path, stem: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == stem {
                return Some((0, e.path()));
            }
            let rest = name.strip_prefix(stem)?.strip_prefix('.')?;
            let major: u32 = rest.split('.').next()?.parse().ok()?;
            Some((major, e.path()))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    found.into_iter().map(|(_, p)| p).collect()
}

/// Opens `need` as cudarc would (bare names through the loader's path), else from an install folder (with its
/// companions, which are returned too so that the caller keeps them loaded).
fn open(need: &Needed, folders: &[PathBuf]) -> Result<(Library, String, Vec<Library>), CudaUnavailable> {
    let mut tried = Vec::new();
    for name in need
        .cudarc_names
        .iter()
        .flat_map(|n| cudarc::get_lib_name_candidates(n))
    {
        // SAFETY: opening a shared library runs its initialisers; these are NVIDIA's CUDA libraries, whose
        // initialisers have no preconditions.
        if let Ok(lib) = unsafe { Library::new(&name) } {
            return Ok((lib, name, Vec::new()));
        }
        tried.push(name);
    }
    for dir in folders {
        for stem in need.file_stems {
            for path in files_in(dir, stem) {
                // SAFETY: as above.
                if let Ok(lib) = unsafe { Library::new(&path) } {
                    let companions = need
                        .companions
                        .iter()
                        .flat_map(|c| files_in(dir, c))
                        // SAFETY: as above.
                        .filter_map(|p| unsafe { Library::new(&p) }.ok())
                        .collect();
                    return Ok((lib, path.display().to_string(), companions));
                }
                tried.push(path.display().to_string());
            }
        }
    }
    tried.dedup();
    let shown = if tried.len() > 6 {
        format!("{} and {} more names and paths", tried[..6].join(", "), tried.len() - 6)
    } else {
        tried.join(", ")
    };
    Err(CudaUnavailable::LibraryMissing {
        library: need.library,
        tried: shown,
    })
}

fn check_symbols(need: &Needed, lib: &Library, path: &str) -> Result<(), CudaUnavailable> {
    for &symbol in need.symbols {
        // SAFETY: only the symbol's presence is checked; the pointer is never called through this type.
        if unsafe { lib.get::<*const ()>(symbol.as_bytes()) }.is_err() {
            return Err(CudaUnavailable::SymbolMissing {
                library: need.library,
                path: path.to_string(),
                symbol,
            });
        }
    }
    Ok(())
}

fn run_probe() -> Result<CudaProbe, CudaUnavailable> {
    let folders = install_folders();
    let mut libraries = Vec::new();
    let mut kept = Vec::new();
    let mut driver_version = 0;
    let mut device_count = 0;
    for need in [&DRIVER, &NVRTC, &CUBLAS_LT, &CUBLAS] {
        let (lib, path, companions) = open(need, &folders)?;
        check_symbols(need, &lib, &path)?;
        kept.extend(companions);
        if std::ptr::eq(need, &DRIVER) {
            // SAFETY: the signatures are the CUDA driver API's (`CUresult f(int*)`, `CUresult f(unsigned)`),
            // checked present above; they may be called before any other driver call.
            unsafe {
                let get_version = lib
                    .get::<unsafe extern "C" fn(*mut c_int) -> c_int>(b"cuDriverGetVersion")
                    .map_err(|_| CudaUnavailable::DriverInit {
                        call: "cuDriverGetVersion",
                        code: -1,
                    })?;
                let code = get_version(&mut driver_version);
                if code != 0 {
                    return Err(CudaUnavailable::DriverInit {
                        call: "cuDriverGetVersion",
                        code,
                    });
                }
                if driver_version < REQUIRED_DRIVER_VERSION {
                    return Err(CudaUnavailable::DriverTooOld { found: driver_version });
                }
                let init = lib
                    .get::<unsafe extern "C" fn(c_uint) -> c_int>(b"cuInit")
                    .map_err(|_| CudaUnavailable::DriverInit {
                        call: "cuInit",
                        code: -1,
                    })?;
                let code = init(0);
                // CUDA_ERROR_NO_DEVICE
                if code == 100 {
                    return Err(CudaUnavailable::NoDevice);
                }
                if code != 0 {
                    return Err(CudaUnavailable::DriverInit { call: "cuInit", code });
                }
                let count = lib
                    .get::<unsafe extern "C" fn(*mut c_int) -> c_int>(b"cuDeviceGetCount")
                    .map_err(|_| CudaUnavailable::DriverInit {
                        call: "cuDeviceGetCount",
                        code: -1,
                    })?;
                let code = count(&mut device_count);
                if code != 0 {
                    return Err(CudaUnavailable::DriverInit {
                        call: "cuDeviceGetCount",
                        code,
                    });
                }
                if device_count <= 0 {
                    return Err(CudaUnavailable::NoDevice);
                }
            }
        }
        libraries.push((need.library, path));
        kept.push(lib);
    }
    // Keep every library loaded for the life of the process: cudarc opens the same sonames again.
    std::mem::forget(kept);
    Ok(CudaProbe {
        libraries,
        driver_version,
        device_count,
    })
}

/// Whether CUDA can be used here, and if not, why (computed once per process).
pub fn probe() -> Result<CudaProbe, CudaUnavailable> {
    OPENED.get_or_init(run_probe).clone()
}

/// Finds NVRTC alone (no driver or device needed): enough to compile the kernels, which the CPU-only test
/// suite does to keep them from rotting.
pub fn probe_nvrtc() -> Result<String, CudaUnavailable> {
    static NVRTC_ONLY: OnceLock<Result<String, CudaUnavailable>> = OnceLock::new();
    NVRTC_ONLY
        .get_or_init(|| {
            let (lib, path, companions) = open(&NVRTC, &install_folders())?;
            check_symbols(&NVRTC, &lib, &path)?;
            std::mem::forget(lib);
            std::mem::forget(companions);
            Ok(path)
        })
        .clone()
}
