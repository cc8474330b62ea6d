"""A module beside the entrypoint: the job imports it from its working directory."""


def shout(text: str) -> str:
    return text.upper() + "!"
