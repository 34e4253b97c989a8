"""Exit codes and the one error hierarchy. Every KitError carries its exit code
and a one-line message that says what is wrong and how to fix it."""

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    INTERNAL = 1          # a bug in kit: rerun with --debug and report it
    BAD_INPUT = 2         # the user's arguments are wrong
    CATALOG = 3           # incident_recipes.yaml or a template is wrong
    REFUSED = 4           # the guardrail refused to attach
    UNSUPPORTED = 5       # the kernel or privileges lack what the recipe needs
    COMPILE = 6           # BCC could not compile, or the verifier rejected the program
    BREAKER = 7           # the guardrail stopped a running probe for overhead
    FLEET_PARTIAL = 8     # kit fleet run: some host refused, failed, was unreachable or stopped early
    OUTPUT = 9            # ran, but an output could not be written (the results went to the terminal instead)
    INTERRUPTED = 130     # Ctrl-C (results are still printed)
    TERMINATED = 143      # SIGTERM (results are still printed)


class KitError(Exception):
    code = ExitCode.INTERNAL

    def __init__(self, message, hint=None, details=()):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = list(details)  # lines under the error (a refusal's ready-to-paste ways out)

    def line(self):
        """One printable line: user text quoted in a message cannot break it or drive the terminal."""
        return printable(f"{self.message}" + (f" — {self.hint}" if self.hint else ""))

    def lines(self):
        """The line, then each detail line on its own, each printable."""
        return [self.line()] + [printable(d) for d in self.details]


def printable(text):
    """Escapes control, format and separator characters (newline, ESC, NUL, bidi overrides...)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


class BadInput(KitError):
    code = ExitCode.BAD_INPUT


class CatalogError(KitError):
    code = ExitCode.CATALOG


class Refused(KitError):
    code = ExitCode.REFUSED


class Unsupported(KitError):
    code = ExitCode.UNSUPPORTED


class CompileError(KitError):
    code = ExitCode.COMPILE
