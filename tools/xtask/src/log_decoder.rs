//! Live decoding of the hypervisor's defmt log.
//!
//! The hypervisor writes rzcobs-framed defmt frames on its own UART; QEMU hands that byte stream
//! to us over a Unix socket. Each decoded frame becomes one line, prefixed `[hyp]` so it never
//! mixes with a guest's console, and is checked for the exit-status line.

use crate::Result;
use defmt_decoder::{DecodeError, Table};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

/// The log line with which the hypervisor reports how the run ended (see `hyp::arch::power`).
const EXIT_MARKER: &str = "hypervisor exit: status ";

/// What the log said, shared between the decoding thread and the runner.
#[derive(Debug, Default)]
pub(crate) struct HypLog {
    /// Every decoded line, without prefix: `LEVEL message`.
    pub(crate) lines: Vec<String>,
    /// The status from the exit line, once seen.
    pub(crate) exit_status: Option<u32>,
    /// Frames that could not be decoded.
    pub(crate) malformed_frames: usize,
}

/// The symbol table of the hypervisor ELF, to decode its frames.
pub(crate) fn load_table(elf: &[u8]) -> Result<Table> {
    Table::parse(elf)?.ok_or_else(|| "the hypervisor ELF has no defmt table".into())
}

/// Reads `input` to its end, decoding frames into `log`, echoing them when `echo` is set and
/// copying the raw bytes to `raw` (for decoding again later).
pub(crate) fn decode_stream(
    table: &Table,
    mut input: impl Read,
    log: &Arc<Mutex<HypLog>>,
    echo: bool,
    mut raw: Option<std::fs::File>,
) {
    let mut decoder = table.new_stream_decoder();
    let mut buffer = [0u8; 4096];
    loop {
        let count = match input.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(count) => count,
        };
        let bytes = buffer.get(..count).unwrap_or_default();
        if let Some(file) = raw.as_mut() {
            let _ = file.write_all(bytes);
        }
        decoder.received(bytes);
        loop {
            match decoder.decode() {
                Ok(frame) => {
                    let level = frame.level().map_or("", |l| l.as_str());
                    let line = match frame.display_timestamp() {
                        Some(ts) => format!(
                            "{ts} {:<5} {}",
                            level.to_uppercase(),
                            frame.display_message()
                        ),
                        None => format!("{:<5} {}", level.to_uppercase(), frame.display_message()),
                    };
                    record(log, line, echo);
                }
                Err(DecodeError::UnexpectedEof) => break,
                Err(DecodeError::Malformed) => {
                    let mut log = log
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    log.malformed_frames += 1;
                    if echo {
                        println!("[hyp] (malformed frame skipped)");
                    }
                }
            }
        }
    }
}

/// Whether the guest console last printed a partial line: a `[hyp]` line then starts on a
/// fresh line so the two streams never share one.
pub(crate) static CONSOLE_MID_LINE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

fn record(log: &Arc<Mutex<HypLog>>, line: String, echo: bool) {
    if echo {
        let mut out = std::io::stdout().lock();
        if CONSOLE_MID_LINE.swap(false, std::sync::atomic::Ordering::AcqRel) {
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "[hyp] {line}");
        let _ = out.flush();
    }
    let mut log = log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(status) = parse_exit_status(&line) {
        log.exit_status = Some(status);
    }
    log.lines.push(line);
}

/// The status in a line containing the exit marker.
fn parse_exit_status(line: &str) -> Option<u32> {
    let rest = &line[line.find(EXIT_MARKER)? + EXIT_MARKER.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_status_is_read_from_the_marker_line_only() {
        assert_eq!(
            parse_exit_status("0.123456 INFO  hypervisor exit: status 0"),
            Some(0)
        );
        assert_eq!(
            parse_exit_status("INFO  hypervisor exit: status 101"),
            Some(101)
        );
        assert_eq!(parse_exit_status("INFO  hypervisor exit: status x"), None);
        assert_eq!(parse_exit_status("INFO  something else 3"), None);
    }
}
