//! The compiled guard-ebpf object, embedded at build time, and loading it.
use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupSockAddr, ProgramError},
};
use guard_common::{MAP_IPME_V4, MAP_IPME_V6, MAP_PORTS, MAP_STATS};

use super::{GuardError, Hook, PinDir};

/// Built by guard-loader's build.rs with aya-build.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard-ebpf"));

/// The first line only: a verifier log is hundreds of lines (set QMAIL_GUARD_VERBOSE=1 for it).
fn load_err(e: impl std::fmt::Display) -> GuardError {
    let text = e.to_string();
    if std::env::var_os("QMAIL_GUARD_VERBOSE").is_some() {
        return GuardError::Load(text);
    }
    let first = text.split(". Verifier output").next().unwrap_or(&text);
    GuardError::Load(first.lines().next().unwrap_or_default().to_string())
}

/// The two programs, from their pins when present, else freshly loaded, verified and pinned
/// (maps are created at, or reused from, their pin paths).
pub fn programs(pins: &PinDir) -> Result<Vec<(Hook, CgroupSockAddr)>, GuardError> {
    if !Hook::ALL.iter().all(|h| pins.prog(*h).exists()) {
        load_and_pin(pins)?;
    }
    Hook::ALL
        .into_iter()
        .map(|hook| {
            let prog = CgroupSockAddr::from_pin(pins.prog(hook), attach_type(hook))
                .map_err(|e| GuardError::ProgramPin(pins.prog(hook), e.to_string()))?;
            Ok((hook, prog))
        })
        .collect()
}

/// Tags (the kernel's hash of the instructions) of this binary's own programs, loaded without
/// pinning or attaching and freed again: equal to the pinned programs' tags when those came
/// from this build.
pub fn embedded_tags() -> Result<Vec<(Hook, u64)>, GuardError> {
    let mut ebpf: Ebpf = EbpfLoader::new().load(EBPF_OBJECT).map_err(load_err)?;
    Hook::ALL
        .into_iter()
        .map(|hook| {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(hook.name())
                .ok_or(GuardError::MissingProgram(hook.name()))?
                .try_into()
                .map_err(|e: ProgramError| load_err(e))?;
            prog.load().map_err(load_err)?;
            Ok((hook, prog.info().map_err(load_err)?.tag()))
        })
        .collect()
}

fn attach_type(hook: Hook) -> aya::programs::CgroupSockAddrAttachType {
    match hook {
        Hook::Connect4 => aya::programs::CgroupSockAddrAttachType::Connect4,
        Hook::Connect6 => aya::programs::CgroupSockAddrAttachType::Connect6,
    }
}

fn load_and_pin(pins: &PinDir) -> Result<(), GuardError> {
    let paths: Vec<_> = [MAP_IPME_V4, MAP_IPME_V6, MAP_PORTS, MAP_STATS]
        .into_iter()
        .map(|name| (name, pins.map(name)))
        .collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf: Ebpf = loader.load(EBPF_OBJECT).map_err(load_err)?;
    for hook in Hook::ALL {
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(hook.name())
            .ok_or(GuardError::MissingProgram(hook.name()))?
            .try_into()
            .map_err(|e: ProgramError| load_err(e))?;
        prog.load().map_err(load_err)?;
        let path = pins.prog(hook);
        // A stale pin from an interrupted run would make pinning fail.
        let _ = std::fs::remove_file(&path);
        prog.pin(&path)
            .map_err(|e| GuardError::PinIo(path, std::io::Error::other(e.to_string())))?;
    }
    Ok(())
}
