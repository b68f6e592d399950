"""The server's one typed config: limits, queue size, auth and CORS (CLI > defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from limamono.core.policy import PromptPolicy
from limamono.samplers import SamplerError, SamplerSettings, get_preset


@dataclass(frozen=True)
class ServerConfig:
    """Everything the app factory needs besides the engine.

    Attributes:
        preset: Sampler preset for every field a request does not send (``--preset``).
        queue: Requests allowed to wait behind the running generation (``--queue``);
            more get 503 with ``Retry-After``.
        api_key: When set, every route except health and version needs
            ``Authorization: Bearer <key>`` (``--api-key``).
        cors_origins: Browser origins allowed to call the API (``--cors-origin``); none:
            no CORS headers at all. A page of any other origin may not POST.
        allowed_hosts: ``Host`` names served beside IP addresses, localhost and names
            without a dot (``--allow-host``; ``*.example.org``, or ``*`` for any).
        max_body_bytes: Larger request bodies get 413.
        default_max_tokens: Reply length when a request gives none.
        max_stop_strings: More stop strings in one request are refused (400).
        max_stop_chars: Longer stop strings are refused (400).
        retry_after_s: ``Retry-After`` of a 503 (SillyTavern retries every 2.5 s anyway).
        adapter_name: Shown as the LoRA in ``/v1/internal/model/info``.
        prompt_policy: Labels and fits the chat route's prompts (``--policy``; the
            adapter's trigger and length bounds).
        samplers: The base sampler settings when they are not a named preset's (the
            adapter card's saved values); None: ``preset``'s.
        slot_save_path: Folder of ``/slots/{id}?action=save|restore`` files
            (``--slot-save-path``); None: those actions answer 501.
        cpu_threads: Request steps (building and fitting prompts, tokenizing) run in at
            most this many threads at once, off the event loop.
        cpu_waiting: Requests allowed to wait for such a thread; more get 503.
        admin_key: The key of the adapter routes (``--admin-key``); None: they are off.
        lora_dir: Folder of the adapters those routes may load by name (``--lora-dir``).
    """

    preset: str = "limamono"
    queue: int = 16
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    default_max_tokens: int = 256
    max_stop_strings: int = 32
    max_stop_chars: int = 512
    retry_after_s: int = 2
    adapter_name: str | None = None
    prompt_policy: PromptPolicy = field(default_factory=PromptPolicy)
    samplers: SamplerSettings | None = None
    slot_save_path: Path | None = None
    cpu_threads: int = 2
    cpu_waiting: int = 64
    admin_key: str | None = None
    lora_dir: Path | None = None

    def __post_init__(self) -> None:
        """Check the limits; raise ValueError naming the option and its allowed range."""
        checks = {"queue": (self.queue, 0), "max_body_bytes": (self.max_body_bytes, 1024),
                  "default_max_tokens": (self.default_max_tokens, 1),
                  "max_stop_strings": (self.max_stop_strings, 1),
                  "max_stop_chars": (self.max_stop_chars, 1),
                  "retry_after_s": (self.retry_after_s, 0),
                  "cpu_threads": (self.cpu_threads, 1), "cpu_waiting": (self.cpu_waiting, 0)}
        for name, (value, low) in checks.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r}: must be a whole number >= {low}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty: pass a non-empty key or none at all")
        if self.admin_key is not None and not self.admin_key.strip():
            raise ValueError("admin_key is empty: pass a non-empty key or none at all")
        self.sampler_settings()  # an unknown preset fails now, not at the first request

    def sampler_settings(self) -> SamplerSettings:
        """The preset's settings (the base of every request's samplers).

        Raises:
            ValueError: Unknown preset (the message lists the known ones).
        """
        if self.samplers is not None:
            return self.samplers
        try:
            return get_preset(self.preset)
        except SamplerError as error:
            raise ValueError(str(error)) from None
