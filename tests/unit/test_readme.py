"""The README's two commands work as written on a fresh Debian 12 as root: no `sudo` (a fresh
machine has none), scripts that exist and are executable, and CI runs the README's test command."""

import os
import re

from conftest import ROOT


def readme_commands():
    with open(os.path.join(ROOT, "README.md")) as f:
        block = re.search(r"```sh\n(.*?)```", f.read(), re.S).group(1)
    return [line.split("#", 1)[0].split() for line in block.splitlines() if line.strip()]


def test_the_readmes_commands_are_the_repos_own_scripts_without_sudo():
    cmds = readme_commands()
    assert cmds == [["./demo.sh"], ["./test.sh"]], cmds
    for (script,) in cmds:
        path = os.path.join(ROOT, script)
        assert os.access(path, os.X_OK), script
        with open(path) as f:
            text = f.read()
        # they set up themselves; setup.sh is what refuses a non-root user, in one line
        assert "\n./setup.sh\n" in text and not re.search(r"^\s*sudo\b", text, re.M), script
    with open(os.path.join(ROOT, "setup.sh")) as f:
        assert 'if [ "$(id -u)" -ne 0 ]' in f.read()


def test_ci_runs_the_readmes_test_command():
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert lines[-1] == "exec " + " ".join(readme_commands()[1]), lines
