//! Run-time compilation of the kernels with NVRTC.
//!
//! The sources live in `kernels/*.cu` and are embedded with `include_str!`. They are compiled to a CUBIN for
//! the device's own architecture (`sm_90` on the H100/H200), which the driver loads as is: no PTX JIT, and no
//! dependence on the driver understanding the PTX version of a newer NVRTC. If NVRTC does not know the device's
//! architecture (a GPU newer than the NVRTC), the fallback is PTX for the newest virtual architecture it
//! offers among [`PTX_FALLBACK_ARCHS`], which the driver JIT-compiles for the device.

use std::ffi::{c_char, CStr, CString};

use cudarc::nvrtc::sys;

/// Virtual architectures tried, newest first, when NVRTC cannot emit a CUBIN for the device.
pub const PTX_FALLBACK_ARCHS: &[&str] = &["compute_120", "compute_100", "compute_90", "compute_80"];

/// The kernel sources, concatenated into one module (the helpers first).
pub fn main_module_source() -> String {
    [
        include_str!("kernels/common.cuh"),
        include_str!("kernels/elementwise.cu"),
        include_str!("kernels/reduce.cu"),
        include_str!("kernels/rmsnorm.cu"),
        include_str!("kernels/rope.cu"),
        include_str!("kernels/activation.cu"),
        include_str!("kernels/embedding.cu"),
        include_str!("kernels/quant.cu"),
        include_str!("kernels/loss.cu"),
    ]
    .join("\n")
}

/// The attention kernels for one head dimension (a compile-time constant: it sizes the register arrays).
pub fn attention_module_source(head_dim: usize) -> String {
    format!(
        "#define HEAD_DIM {head_dim}\n{}\n{}",
        include_str!("kernels/common.cuh"),
        include_str!("kernels/attention.cu")
    )
}

/// A compiled module: a CUBIN (loadable as is) or PTX text (JIT-compiled by the driver).
#[derive(Clone, Debug)]
pub enum Image {
    Cubin(Vec<u8>),
    Ptx(String),
}

/// A failed compilation with NVRTC's log.
#[derive(Clone, Debug, thiserror::Error)]
#[error("NVRTC could not compile {name} for {arch} (error {code}):\n{log}")]
pub struct CompileFailure {
    pub name: String,
    pub arch: String,
    pub code: i32,
    pub log: String,
}

fn failure(name: &str, arch: &str, code: sys::nvrtcResult, log: String) -> CompileFailure {
    CompileFailure {
        name: name.to_string(),
        arch: arch.to_string(),
        code: code as i32,
        log,
    }
}

/// NVRTC's version, `(major, minor)`. The library must have been found by [`super::probe()`] or
/// [`super::probe_nvrtc`] first.
pub fn nvrtc_version() -> Option<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two valid out-pointers; NVRTC was probed present.
    let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    (r == sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// Compiles `source` for `arch` (`sm_XY` gives a CUBIN, `compute_XY` PTX). NVRTC must have been probed present.
pub fn compile(source: &str, name: &str, arch: &str) -> Result<Image, CompileFailure> {
    let c_src = CString::new(source).map_err(|_| {
        failure(
            name,
            arch,
            sys::nvrtcResult::NVRTC_ERROR_INVALID_INPUT,
            "source holds a NUL byte".into(),
        )
    })?;
    let c_name = CString::new(name).map_err(|_| {
        failure(
            name,
            arch,
            sys::nvrtcResult::NVRTC_ERROR_INVALID_INPUT,
            "name holds a NUL byte".into(),
        )
    })?;
    let options: Vec<CString> = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        // IEEE division and square root: the quantizers divide by the scale exactly as the CPU and the export do.
        "--prec-div=true".to_string(),
        "--prec-sqrt=true".to_string(),
        "--fmad=true".to_string(),
        "--device-as-default-execution-space".to_string(),
    ]
    .into_iter()
    .map(|o| CString::new(o).unwrap_or_default())
    .collect();
    let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: valid NUL-terminated strings that outlive the program; no headers.
    let r = unsafe {
        sys::nvrtcCreateProgram(
            &mut prog,
            c_src.as_ptr(),
            c_name.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(failure(name, arch, r, "nvrtcCreateProgram failed".into()));
    }
    let result = (|| {
        // SAFETY: `prog` is a live program; the option pointers are valid for the call.
        let r = unsafe { sys::nvrtcCompileProgram(prog, option_ptrs.len() as i32, option_ptrs.as_ptr()) };
        if r != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(failure(name, arch, r, program_log(prog)));
        }
        let mut size = 0usize;
        if arch.starts_with("sm_") {
            // SAFETY: `prog` compiled; the buffer has the size NVRTC reported.
            unsafe {
                let r = sys::nvrtcGetCUBINSize(prog, &mut size);
                if r != sys::nvrtcResult::NVRTC_SUCCESS {
                    return Err(failure(name, arch, r, "nvrtcGetCUBINSize failed".into()));
                }
                let mut cubin = vec![0u8; size];
                let r = sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char);
                if r != sys::nvrtcResult::NVRTC_SUCCESS {
                    return Err(failure(name, arch, r, "nvrtcGetCUBIN failed".into()));
                }
                Ok(Image::Cubin(cubin))
            }
        } else {
            // SAFETY: as above, for the PTX text (NUL-terminated, `size` includes the NUL).
            unsafe {
                let r = sys::nvrtcGetPTXSize(prog, &mut size);
                if r != sys::nvrtcResult::NVRTC_SUCCESS {
                    return Err(failure(name, arch, r, "nvrtcGetPTXSize failed".into()));
                }
                let mut ptx = vec![0u8; size.max(1)];
                let r = sys::nvrtcGetPTX(prog, ptx.as_mut_ptr() as *mut c_char);
                if r != sys::nvrtcResult::NVRTC_SUCCESS {
                    return Err(failure(name, arch, r, "nvrtcGetPTX failed".into()));
                }
                let text = CStr::from_bytes_until_nul(&ptx)
                    .map(|c| c.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Ok(Image::Ptx(text))
            }
        }
    })();
    // SAFETY: `prog` was created above and is destroyed once.
    unsafe {
        sys::nvrtcDestroyProgram(&mut prog);
    }
    result
}

/// Compiles for `sm_{major}{minor}`, falling back to PTX for an older virtual architecture.
pub fn compile_for_device(source: &str, name: &str, major: i32, minor: i32) -> Result<(Image, String), CompileFailure> {
    let arch = format!("sm_{major}{minor}");
    match compile(source, name, &arch) {
        Ok(image) => Ok((image, arch)),
        // A source error fails on every architecture: report the native one's log.
        Err(e) if e.code == sys::nvrtcResult::NVRTC_ERROR_COMPILATION as i32 => Err(e),
        Err(first) => {
            let device = major * 10 + minor;
            for fallback in PTX_FALLBACK_ARCHS {
                let v: i32 = fallback.trim_start_matches("compute_").parse().unwrap_or(i32::MAX);
                if v > device {
                    continue;
                }
                if let Ok(image) = compile(source, name, fallback) {
                    return Ok((image, fallback.to_string()));
                }
            }
            Err(first)
        }
    }
}

fn program_log(prog: sys::nvrtcProgram) -> String {
    let mut size = 0usize;
    // SAFETY: `prog` is live; the buffer has the size NVRTC reported.
    unsafe {
        if sys::nvrtcGetProgramLogSize(prog, &mut size) != sys::nvrtcResult::NVRTC_SUCCESS {
            return String::new();
        }
        let mut log = vec![0u8; size.max(1)];
        if sys::nvrtcGetProgramLog(prog, log.as_mut_ptr() as *mut c_char) != sys::nvrtcResult::NVRTC_SUCCESS {
            return String::new();
        }
        CStr::from_bytes_until_nul(&log)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}
