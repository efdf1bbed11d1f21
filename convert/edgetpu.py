"""Compile int8 models for the Edge TPU with Google's ``edgetpu_compiler`` when it is on PATH.

The compiler runs only on x86-64 Linux (from Coral's apt repository). Without it, the
int8 model is kept as is and the user is told the exact command to run elsewhere.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

COMPILER = "edgetpu_compiler"


@dataclass
class CompileResult:
    compiled: Path | None
    ops_on_tpu: int = 0
    ops_on_cpu: int = 0
    cpu_ops: dict[str, int] = field(default_factory=dict)
    message: str = ""
    off_chip: str = ""  # parameters streamed from the host on every inference ("0.00B" is what one wants)


def compile_command(model: Path, out_dir: Path) -> list[str]:
    return [COMPILER, "--show_operations", "--out_dir", str(out_dir), str(model)]


def parse_log(text: str) -> tuple[int, int, dict[str, int]]:
    """(ops on the Edge TPU, ops on the CPU, {operator: count left on the CPU}) from a compiler log."""
    on_tpu = re.search(r"operations that will run on Edge TPU:\s*(\d+)", text)
    on_cpu = re.search(r"operations that will run on CPU:\s*(\d+)", text)
    cpu_ops: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"^\s*([A-Z][A-Z0-9_]+)\s+(\d+)\s+(.*)$", line)
        if match and "Mapped to Edge TPU" not in match.group(3):
            cpu_ops[match.group(1)] = cpu_ops.get(match.group(1), 0) + int(match.group(2))
    return (int(on_tpu.group(1)) if on_tpu else 0, int(on_cpu.group(1)) if on_cpu else 0, cpu_ops)


def compile_for_edgetpu(model: Path, out_dir: Path) -> CompileResult:
    """Compile ``model`` into ``out_dir`` (``<stem>_edgetpu.tflite``), or explain how to."""
    if shutil.which(COMPILER) is None:
        command = " ".join(compile_command(Path(model.name), Path(".")))
        return CompileResult(
            None,
            message=(f"{COMPILER} is not on PATH (Coral's edgetpu-compiler package, x86-64 Linux only); the bundle "
                     f"has the int8 model only. The compile step is: {command} (in the bundle folder); for a bundle "
                     "that lists the compiled model, rerun this command with --edgetpu on a machine that has it"),
        )
    proc = subprocess.run(compile_command(model, out_dir), capture_output=True, text=True, check=False)
    log_text = proc.stdout + proc.stderr
    compiled = out_dir / f"{model.stem}_edgetpu.tflite"
    if proc.returncode != 0 or not compiled.exists():
        first = (log_text.strip().splitlines() or ["no output"])[-1]
        return CompileResult(None, message=f"{COMPILER} failed on {model.name}: {first}")
    on_tpu, on_cpu, cpu_ops = parse_log(log_text)
    off_chip = re.search(r"Off-chip memory used for streaming uncached model parameters:\s*(\S+)", log_text)
    (out_dir / f"{model.stem}_edgetpu.log").unlink(missing_ok=True)
    note = f"{on_tpu} ops on the Edge TPU, {on_cpu} on the CPU"
    if cpu_ops:
        note += " (left on the CPU: " + ", ".join(f"{k}×{v}" for k, v in sorted(cpu_ops.items())) + ")"
    if off_chip and off_chip.group(1) not in ("0.00B", "0B"):
        note += f"; {off_chip.group(1)} of parameters streamed from the host on every inference"
    return CompileResult(compiled, on_tpu, on_cpu, cpu_ops, f"compiled {model.name}: {note}",
                         off_chip.group(1) if off_chip else "")
