"""Built-in stage executor: runs a stage notebook with papermill on a local kernel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lab import hookimpl
from lab.pipeline.stage import StageExecutor, StageFailed


class PapermillExecutor(StageExecutor):
    """Runs the notebook in a fresh ``python3`` kernel (the interpreter running lab)."""

    def __init__(self, kernel_name: str = "python3"):
        self.kernel_name = kernel_name

    def execute(self, notebook: Path, output_notebook: Path, params: dict[str, Any], cwd: Path) -> None:
        # papermill and the kernel machinery load only when a stage really runs
        import papermill
        from papermill.exceptions import PapermillExecutionError

        output_notebook.parent.mkdir(parents=True, exist_ok=True)
        try:
            papermill.execute_notebook(
                str(notebook),
                str(output_notebook),
                parameters=params,
                cwd=str(cwd),
                kernel_name=self.kernel_name,
                progress_bar=False,
                log_output=False,
                # ipykernel warns on every start that local TCP is unencrypted; the kernel
                # listens on loopback only, so keep stage output to what the stage says.
                extra_arguments=["--IPKernelApp.log_level=ERROR"],
            )
        except PapermillExecutionError as exc:
            raise StageFailed(notebook.stem, f"{exc.ename}: {exc.evalue}", str(output_notebook)) from None
        except FileNotFoundError as exc:
            raise StageFailed(notebook.stem, f"notebook not found: {exc}", None) from None


@hookimpl(trylast=True)
def lab_stage_executor(config):
    return PapermillExecutor()
