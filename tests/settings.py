"""The settings the tests run with, in pytest and in the servers and workers they start (which
inherit DJANGO_SETTINGS_MODULE): production's, with cheaper password hashing.

Hashing a password with PBKDF2 as production does takes ~0.5 s of CPU, and the suite signs in
(and fails to, since Django hashes for unknown accounts too) a few hundred times. Same
algorithm, far fewer rounds: a stored hash names its rounds, so a hash made here is still
checked correctly by production's hasher."""

from django.contrib.auth.hashers import PBKDF2PasswordHasher

from helpdesk.settings import *  # noqa: F403


class QuickPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    iterations = 1_000


PASSWORD_HASHERS = ["tests.settings.QuickPBKDF2PasswordHasher"]
