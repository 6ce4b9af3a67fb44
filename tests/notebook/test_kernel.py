"""The notebook layer in a real IPython kernel (nbclient and jupyter_client; no browser).

Checks what only a kernel shows: the display bundle a cell really gets, task
output landing in the cell that started the flow, ``%%flow`` cells that keep
serving widget messages (the Cancel button) and kernel interrupts.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupyter_client = pytest.importorskip("jupyter_client")

SETUP = """
import asyncio, threading
import nbflow
from nbflow import flow, task

@task
def square(x):
    if x == 3:
        print("three!")
    return x * x

@task(name="<script>alert(1)</script>")
def fails(x):
    raise ValueError("bad")

stop = threading.Event()

@task
def work():
    print("started", flush=True)
    while not stop.wait(0.005):
        pass
"""


def _text(outputs: list, kind: str = "stdout") -> str:
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream" and o.get("name") == kind)


def _data(outputs: list) -> list[dict]:
    return [o["data"] for o in outputs if o.get("output_type") in ("display_data", "execute_result")]


def test_notebook_cells_show_views_results_and_errors():
    cells = [
        "%load_ext nbflow",
        SETUP,
        "@flow(name='plain')\ndef plain(n):\n    return sum(square.map(range(n)).result())\nplain(200)",
        "%%flow etl --max-workers 4\nsquares = square.map(range(50))\ntotal = sum(f.result() for f in squares)\ntotal",
        "print(total)",
        "%%flow\nfails.submit(1).result()",
        "@task\nasync def plus(x):\n    await asyncio.sleep(0.01)\n    return x + 1\n"
        "@flow\nasync def async_flow():\n    return await plus(1)\n"
        "@flow\ndef sync_flow():\n    return plus.submit(2).result()\n"
        "(await async_flow(), sync_flow())",
        "%nbflow runs",
        "@task\ndef chatty(x):\n    nbflow.get_run_logger().info('logged %s', x)\n"
        "@flow\ndef logging_flow():\n    chatty.submit(7).wait()\nlogging_flow()",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nbclient.NotebookClient(nb, timeout=60, kernel_name="python3", allow_errors=True).execute()
    outs = [cell.outputs for cell in nb.cells]

    assert "three!" in _text(outs[2])  # printed in a worker thread, shown in its own cell
    plain_view, plain_result = _data(outs[2])
    assert plain_view["text/plain"] == "<nbflow run 'plain': Completed, 200 task runs>"
    assert "application/vnd.jupyter.widget-view+json" in plain_view
    assert "<svg" in plain_view["text/html"] and "square x200" in plain_view["text/html"]
    assert plain_result["text/plain"] == str(sum(x * x for x in range(200)))

    etl_view, etl_result = _data(outs[3])
    assert etl_view["text/plain"] == "<nbflow run 'etl': Completed, 50 task runs>"
    assert etl_result["text/plain"] == "40425"
    assert _text(outs[4]) == "40425\n"  # names the %%flow cell assigned stay

    (error,) = [o for o in outs[5] if o["output_type"] == "error"]
    assert error["ename"] == "ValueError"
    (failed_view,) = _data(outs[5])
    assert failed_view["text/plain"] == "<nbflow run 'cell': Failed, 1 task run>"
    assert "<script>" not in failed_view["text/html"] and "&lt;script&gt;" in failed_view["text/html"]

    assert _data(outs[6])[-1]["text/plain"] == "(2, 3)"  # async flows and tasks in the kernel's loop
    assert "etl" in _data(outs[7])[0]["text/plain"]
    # a task's log record, in its cell, naming its task run; an INFO line is not shown as an error
    assert re.search(r"\| INFO    \| Task run 'chatty-\w+' - logged 7", _text(outs[8])), _text(outs[8])
    assert not _text(outs[8], "stderr")
    assert not any(_text(o, "stderr") for o in outs[:8]), [_text(o, "stderr") for o in outs]


def test_a_redefined_task_reruns_on_the_process_runner():
    pytest.importorskip("nbflow.runners.processes")
    cells = [
        "%load_ext nbflow",
        "from nbflow import task\n@task\ndef bump(x):\n    print('in a worker process', x)\n    return x + 1",
        "%%flow --runner process --max-workers 1\nbump.submit(1).result()",
        "@task\ndef bump(x):\n    return x + 2",
        "%%flow --runner process --max-workers 1\nbump.submit(1).result()",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    first, second = nb.cells[2].outputs, nb.cells[4].outputs
    assert _text(first) == "in a worker process 1\n"  # a worker process's print, in its cell
    assert _data(first)[-1]["text/plain"] == "2"
    assert _data(second)[-1]["text/plain"] == "3"  # the new definition ran


class Kernel:
    """A kernel driven message by message, keeping every iopub message."""

    def __init__(self) -> None:
        import tempfile

        from jupyter_client.manager import start_new_kernel

        self.km, self.kc = start_new_kernel(kernel_name="python3")
        self.iopub: list[dict] = []
        # Where the kernel writes every thread's stack when a wait here times out: the failure says
        # where the kernel was stuck.
        self.stacks = tempfile.NamedTemporaryFile(prefix="nbflow-kernel-stacks-", suffix=".txt", delete=False).name
        self.kc.execute_interactive(
            f"import faulthandler as _fh, signal as _sig\n"
            f"_fh.register(_sig.SIGUSR1, file=open({self.stacks!r}, 'w'), all_threads=True)",
            timeout=30, output_hook=self.iopub.append,
        )

    def _stacks(self) -> str:
        import os
        import signal

        try:
            os.kill(self.km.provisioner.pid, signal.SIGUSR1)
            time.sleep(1)  # the dump is written by the kernel process; this only reports it
            with open(self.stacks) as f:
                return f.read()[:6000]
        except Exception as exc:  # the report must not hide the failure
            return f"(no stacks: {exc!r})"

    def start(self, code: str) -> str:
        return self.kc.execute(code)

    def read_until(self, predicate, timeout: float = 30) -> dict:
        """Read iopub messages until one satisfies ``predicate``; return it."""
        from queue import Empty

        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
            except Empty:
                seen = [(m["msg_type"], str(m["content"])[:80]) for m in self.iopub[-8:]]
                raise AssertionError(
                    f"no awaited message within {timeout} s; the last ones: {seen}\n"
                    f"the kernel's threads:\n{self._stacks()}"
                ) from None
            self.iopub.append(msg)
            if predicate(msg):
                return msg

    def finish(self, msg_id: str, timeout: float = 30) -> dict:
        """Wait for the cell to go idle; its execute_reply content."""
        self.read_until(
            lambda m: m["parent_header"].get("msg_id") == msg_id
            and m["msg_type"] == "status"
            and m["content"]["execution_state"] == "idle",
            timeout,
        )
        while True:
            reply = self.kc.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"]

    def run(self, code: str, timeout: float = 30) -> dict:
        return self.finish(self.start(code), timeout)

    def stdout(self, msg_id: str) -> str:
        return "".join(
            m["content"]["text"]
            for m in self.iopub
            if m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == msg_id
        )

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    assert k.run("%load_ext nbflow")["status"] == "ok"
    assert k.run(SETUP)["status"] == "ok"
    yield k
    k.close()


def _is_stream(msg_id: str, text: str):
    return lambda m: (
        m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == msg_id and text in m["content"]["text"]
    )


def test_late_task_output_lands_in_the_cell_that_started_the_flow(kernel):
    first = kernel.start(
        "gate, started = threading.Event(), threading.Event()\n"
        "@task\ndef late():\n    started.set()\n    gate.wait(20)\n    print('late print')\n"
        "@flow\ndef background():\n    late.submit().wait()\n"
        # The flow starts while this cell runs (a thread's flow belongs to the cell running when it starts);
        # the print comes once the next cell opens the gate.
        "runner = threading.Thread(target=background)\nrunner.start()\n_ = started.wait(20)"
    )
    assert kernel.finish(first)["status"] == "ok"
    second = kernel.start("gate.set()\nrunner.join(20)\nprint('second cell')")
    assert kernel.finish(second)["status"] == "ok"
    # the routed print is flushed by the kernel's iopub thread, possibly after the second cell's idle
    if "late print" not in kernel.stdout(first):
        kernel.read_until(_is_stream(first, "late print"), timeout=10)
    assert kernel.stdout(second) == "second cell\n"


def test_kernel_interrupt_cancels_the_flow_cell_and_returns_quickly(kernel):
    kernel.run("stop.clear()")
    cell = kernel.start("%%flow --max-workers 1\nsquare.submit(2).wait()\nwork.submit()\nsquare.map(range(5))")
    kernel.read_until(_is_stream(cell, "started"))
    begin = time.monotonic()
    kernel.km.interrupt_kernel()
    reply = kernel.finish(cell)
    assert time.monotonic() - begin < 3
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    check = kernel.start("r = nbflow.runs.last_flow_run()\nprint(r.state.name, sorted(r.state_counts().items()))")
    kernel.finish(check)
    assert kernel.stdout(check) == "Cancelled [('Cancelled', 6), ('Completed', 1)]\n"


def test_interrupting_a_plain_flow_call_cancels_it_too(kernel):
    kernel.run("stop.clear()")
    cell = kernel.start("@flow\ndef plain():\n    work.submit().wait()\nplain()")
    kernel.read_until(_is_stream(cell, "started"))
    begin = time.monotonic()
    kernel.km.interrupt_kernel()
    reply = kernel.finish(cell)
    assert time.monotonic() - begin < 3
    assert reply["ename"] == "KeyboardInterrupt"
    check = kernel.start("print(nbflow.runs.last_flow_run().state.name)")
    kernel.finish(check)
    assert kernel.stdout(check) == "Cancelled\n"


def test_cancel_button_works_while_a_flow_cell_runs(kernel):
    kernel.run("stop.clear()")
    cell = kernel.start("%%flow\nwork.submit().wait()")

    def cancel_button(msg: dict) -> bool:
        if msg["msg_type"] != "comm_open":
            return False
        state: Any = msg["content"]["data"].get("state", {})
        return "cancel_state" in state  # the run view's model

    opened = kernel.read_until(cancel_button)  # the live view appears while the cell awaits
    click = kernel.kc.session.msg(
        "comm_msg",
        {"comm_id": opened["content"]["comm_id"], "data": {"method": "custom", "content": {"type": "cancel"}}},
    )
    begin = time.monotonic()
    kernel.kc.shell_channel.send(click)
    reply = kernel.finish(cell)
    assert time.monotonic() - begin < 3
    assert reply["ename"] == "CancelledRun"
    assert re.search("cancelled from its view", reply["evalue"])


def _run_view_opened(msg: dict) -> bool:
    return msg["msg_type"] == "comm_open" and "cancel_state" in msg["content"]["data"].get("state", {})


def _click(kernel: Kernel, opened: dict, content: dict) -> None:
    kernel.kc.shell_channel.send(kernel.kc.session.msg(
        "comm_msg", {"comm_id": opened["content"]["comm_id"], "data": {"method": "custom", "content": content}}
    ))


def test_cancel_button_works_while_a_plain_flow_call_waits(kernel):
    kernel.run("stop.clear()")
    cell = kernel.start("@flow\ndef plain_wait():\n    work.submit().wait()\n    return 'not cancelled'\nplain_wait()")
    opened = kernel.read_until(_run_view_opened)  # the live view appears while the main thread waits
    _click(kernel, opened, {"type": "list", "seq": 1})  # a question from the view is answered mid-run
    answer = kernel.read_until(lambda m: m["msg_type"] == "comm_msg"
                               and m["content"]["data"].get("content", {}).get("type") == "list")
    assert answer["content"]["data"]["content"]["rows"], answer
    begin = time.monotonic()
    _click(kernel, opened, {"type": "cancel"})
    reply = kernel.finish(cell)
    assert time.monotonic() - begin < 3
    check = kernel.start("r = nbflow.runs.last_flow_run()\nprint(r.flow_name, r.state.name)")
    kernel.finish(check)
    assert kernel.stdout(check) == "plain-wait Cancelled\n", (reply, kernel.stdout(check))
    assert reply['status'] == 'error', reply
    # the cell's own messages stayed the cell's: the next cell runs and goes idle as usual
    assert kernel.run("print('after')")["status"] == "ok"
