"""No Docker engine runs here, so the deployment files are checked by reading them and by
starting their entry points natively."""

import shlex
import subprocess
import sys
from importlib import import_module

import yaml

from tests.conftest import ROOT


def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def command_words(service) -> list[str]:
    command = service["command"]
    words = command if isinstance(command, list) else shlex.split(command)
    if words[:2] == ["sh", "-c"]:
        words = shlex.split(words[2].replace("&&", " && "))
    return words


def test_it_names_the_five_services_with_health_checks():
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "web", "worker", "beat"}
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no health check"
    for name in ("web", "worker", "beat"):
        assert services[name]["build"] == "."
        assert services[name]["environment"]["DJANGO_ENV"] == "production"
        assert services[name]["environment"]["REDIS_URL"].startswith("redis://redis:")
        assert services[name]["environment"]["DATABASE_URL"].startswith("postgres://")


def test_the_web_command_serves_our_asgi_application():
    words = command_words(compose()["services"]["web"])
    assert "migrate" in words
    target = words[words.index("uvicorn") + 1]
    module, attribute = target.split(":")
    assert callable(getattr(import_module(module), attribute))


def test_worker_and_beat_commands_start_our_celery_app():
    services = compose()["services"]
    for name, subcommand in (("worker", "worker"), ("beat", "beat")):
        words = command_words(services[name])
        assert words[:4] == ["celery", "-A", "helpdesk", subcommand]
        # The same app and sub-command accept these options (it fails on an unknown one).
        result = subprocess.run(
            [sys.executable, "-m", *words, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    from helpdesk.celery import app

    app.loader.import_default_modules()
    assert {
        "channels_adapters.tasks.deliver_message",
        "channels_adapters.tasks.sweep_stuck",
        "conversations.tasks.wake_snoozed",
    } <= set(app.tasks)
    app.finalize()
    for entry in app.conf.beat_schedule.values():
        assert entry["task"] in app.tasks


def test_the_dockerfile_and_env_example_exist_and_match():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "helpdesk.asgi:application" in dockerfile
    assert "collectstatic" in dockerfile
    example = (ROOT / ".env.example").read_text()
    for variable in ("SECRET_KEY", "ALLOWED_HOSTS"):
        assert f"{variable}=" in example
