"""The loss registry; `needs_teacher` marks losses that read teacher logits."""

from kdcli.registry import Registry

LOSSES: Registry = Registry("loss")


def register_loss(name: str, *, needs_teacher: bool):
    """Register a loss function under `name`, recording whether it needs teacher logits."""

    def decorate(fn):
        fn.needs_teacher = needs_teacher
        return LOSSES.register(name)(fn)

    return decorate
