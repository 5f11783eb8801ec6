//! tern-runtime on a Cortex-M4F without an operating system or an allocator: a ternary model embedded in
//! flash (`include_bytes!`), a session in one static arena sized at build time, greedy generation from a
//! fixed prompt; the token ids go out over semihosting, with instruction counts.
//!
//! Instructions are counted with SysTick under `qemu-system-arm -icount shift=0`, where the virtual clock
//! advances by exactly 1 ns per executed instruction; SysTick counts that clock at the board's 25 MHz, and
//! a calibration loop of a known instruction count measures the ratio rather than assuming it.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::{debug, hprint, hprintln};
use tern_format::ModelView;
use tern_runtime::{Model, RuntimeError, Sampler, SamplingParams, Session, SessionOptions};

mod params;
use params::{BATCH, CONTEXT, GENERATE, PROMPT};

// `ARENA_BYTES`, computed by build.rs with `SessionOptions::arena_bytes` for the embedded model.
include!(concat!(env!("OUT_DIR"), "/arena.rs"));

/// Bytes on a 64-byte boundary, as the model format and the arena carving want them.
#[repr(C, align(64))]
struct Aligned<T: ?Sized>(T);

/// The model, in flash.
static MODEL: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/model.tern")));

/// The session's arena, in RAM (.bss).
static mut ARENA: Aligned<[u8; ARENA_BYTES]> = Aligned([0; ARENA_BYTES]);

/// 2^20 ticks between SysTick interrupts (~42 M instructions under -icount shift=0).
const RELOAD: u32 = (1 << 20) - 1;
static SYSTICK_WRAPS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    SYSTICK_WRAPS.fetch_add(1, Ordering::Relaxed);
}

/// SysTick ticks since it was started (24-bit counter plus the wraps its interrupt counted).
fn ticks() -> u64 {
    loop {
        let before = SYSTICK_WRAPS.load(Ordering::Relaxed);
        let current = SYST::get_current();
        if SYSTICK_WRAPS.load(Ordering::Relaxed) == before {
            return u64::from(before) * u64::from(RELOAD + 1) + u64::from(RELOAD - current);
        }
    }
}

/// Exactly `2·n` instructions (`subs` + `bne` per iteration) plus a constant few.
fn spin(n: u32) {
    // SAFETY: a register-only countdown loop; touches no memory and no stack.
    unsafe {
        core::arch::asm!("1:", "subs {0}, {0}, #1", "bne 1b", inout(reg) n => _, options(nomem, nostack));
    }
}

/// Bytes below the entry stack pointer painted to measure the stack's high-water mark.
const STACK_PROBE: usize = 256 * 1024;
const PAINT: u32 = 0xA5A5_5A5A;

/// Fills the `STACK_PROBE` bytes below the current stack pointer (unused RAM: the stack grows down into
/// it from the top of RAM, and .bss lies at the bottom, megabytes away) with `PAINT`.
fn paint_stack(sp: usize) {
    let base = (sp - STACK_PROBE) as *mut u32;
    // Stop a little below `sp`: this function's own frame is there.
    for i in 0..(STACK_PROBE - 256) / 4 {
        // SAFETY: inside RAM (see above), word-aligned, and nothing else uses these bytes yet.
        unsafe { base.add(i).write_volatile(PAINT) };
    }
}

extern "C" {
    /// The initial stack pointer (the top of RAM), from cortex-m-rt's linker script.
    static _stack_start: u32;
}

/// Peak stack use since `paint_stack(sp)`: from the top of the stack down to the lowest word no longer
/// painted (main's own frame, above `sp`, included).
fn stack_used(sp: usize) -> usize {
    let top = core::ptr::addr_of!(_stack_start) as usize;
    let base = (sp - STACK_PROBE) as *const u32;
    for i in 0..STACK_PROBE / 4 {
        // SAFETY: the words `paint_stack` wrote; reading them is always sound.
        if unsafe { base.add(i).read_volatile() } != PAINT {
            return top - (base as usize + 4 * i);
        }
    }
    0
}

fn fail(what: &str, e: RuntimeError) -> ! {
    hprintln!("error: {}: {}", what, e);
    debug::exit(debug::EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("panic: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}

#[entry]
fn main() -> ! {
    let sp = cortex_m::register::msp::read() as usize;
    paint_stack(sp);
    let mut core = cortex_m::Peripherals::take().unwrap_or_else(|| panic!("peripherals taken twice"));
    core.SYST.set_clock_source(SystClkSource::Core);
    core.SYST.set_reload(RELOAD);
    core.SYST.clear_current();
    core.SYST.enable_interrupt();
    core.SYST.enable_counter();

    // The counter reads 0 until its first reload.
    while SYST::get_current() == 0 {}

    // Long enough to cross a few reloads, so the wrap counting is part of what is calibrated.
    const SPIN: u32 = 20_000_000;
    let t = ticks();
    spin(SPIN);
    let calibration = ticks() - t;
    let per_tick = 2.0 * f64::from(SPIN) / calibration as f64;
    let instructions = |ticks: u64| (ticks as f64 * per_tick) as u64;

    // SAFETY: the only reference ever made to ARENA: `main` runs once and nothing else touches it.
    let arena: &'static mut [u8] = unsafe { &mut (*core::ptr::addr_of_mut!(ARENA)).0 };

    let t0 = ticks();
    let view = ModelView::parse(&MODEL.0).unwrap_or_else(|e| fail("parse", e.into()));
    let model = Model::new(view).unwrap_or_else(|e| fail("model", e));
    let mut session =
        Session::new(&model, arena, SessionOptions::new(CONTEXT, BATCH)).unwrap_or_else(|e| fail("session", e));
    let t1 = ticks();
    session.prefill(&PROMPT).unwrap_or_else(|e| fail("prefill", e));
    let t2 = ticks();
    let mut sampler = Sampler::new(SamplingParams::greedy());
    let mut generated = [0u32; GENERATE];
    let (mut sample_ticks, mut decode_ticks) = (0, 0);
    for (i, slot) in generated.iter_mut().enumerate() {
        let t = ticks();
        *slot = session.sample(&mut sampler).unwrap_or_else(|e| fail("sample", e));
        let u = ticks();
        sample_ticks += u - t;
        if i + 1 < GENERATE {
            session.decode(*slot).unwrap_or_else(|e| fail("decode", e));
            decode_ticks += ticks() - u;
        }
    }

    let stack = stack_used(sp);
    let c = model.config();
    hprintln!(
        "tern on a Cortex-M4F (QEMU mps2-an386): {} blocks, hidden {}, vocabulary {}; model {} bytes in flash",
        c.n_layers,
        c.hidden_size,
        c.vocab_size,
        MODEL.0.len()
    );
    hprintln!("session: context {} batch {} generate {}", CONTEXT, BATCH, GENERATE);
    hprint!("prompt:");
    for t in PROMPT {
        hprint!(" {}", t);
    }
    hprint!("\ngenerated:");
    for t in generated {
        hprint!(" {}", t);
    }
    hprintln!();
    hprintln!(
        "static memory: arena {} bytes (.bss), peak stack {} bytes",
        ARENA_BYTES,
        stack
    );
    hprintln!(
        "instructions: {} per SysTick tick (calibration); parse and validate the model, carve the arena {}; prompt {} ({} per token, batches of {}); decode {} per token; greedy sampling {} per token",
        per_tick,
        instructions(t1 - t0),
        instructions(t2 - t1),
        instructions(t2 - t1) / PROMPT.len() as u64,
        BATCH,
        instructions(decode_ticks) / (GENERATE as u64 - 1),
        instructions(sample_ticks) / GENERATE as u64
    );
    debug::exit(debug::EXIT_SUCCESS);
    #[allow(clippy::empty_loop)]
    loop {}
}
