import secrets
import subprocess
import sys

import pytest

from tests.conftest import ROOT

GOOD = {
    "DJANGO_ENV": "production",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "DEBUG": "false",
    "ALLOWED_HOSTS": "helpdesk.example.com",
}


def run_manage(*args, **env):
    import os

    environment = {
        k: v
        for k, v in os.environ.items()
        # The settings themselves, not the tests' (tests.settings).
        if k not in ("SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "DJANGO_ENV", "DJANGO_SETTINGS_MODULE")
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        ({"SECRET_KEY": ""}, "SECRET_KEY must be set"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY must be set"),
        ({"DEBUG": "true"}, "DEBUG must be off"),
        ({"ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS must name"),
    ],
)
def test_production_refuses_insecure_defaults(override, complaint):
    env = {**GOOD, **override}
    if override.get("SECRET_KEY") == "":
        del env["SECRET_KEY"]  # not set at all: the development default would apply
    result = run_manage("check", **env)
    assert result.returncode != 0
    assert "Refusing to start in production" in result.stderr
    assert complaint in result.stderr


def test_production_settings_pass_the_deploy_check():
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", **GOOD)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_an_unknown_environment_name_is_refused():
    result = run_manage("check", DJANGO_ENV="prod")
    assert result.returncode != 0
    assert "DJANGO_ENV must be development, test or production" in result.stderr


def test_every_environment_variable_is_documented_in_the_readme():
    import re

    source = (ROOT / "helpdesk" / "settings.py").read_text()
    read = set(re.findall(r'env\.\w+\(\s*"([A-Z_]+)"', source))
    read |= set(re.findall(r'"([A-Z_]+)" in env', source))
    readme = (ROOT / "README.md").read_text()
    assert read, "no variables found: the pattern is out of date"
    missing = sorted(name for name in read if f"`{name}`" not in readme)
    assert not missing, f"not in the README's configuration table: {missing}"
