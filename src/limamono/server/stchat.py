"""SillyTavern's Chat Completion bodies: the conversation behind its prompt-manager messages.

With its default prompt manager, SillyTavern (1.12.6) sends the character's sheet in
several system messages, none of which starts with the character's name (captured bodies:
``shared/testdata/sillytavern/chat_completion_*.json``):

- the main prompt, ``Write {{char}}'s next reply in a fictional chat between {{char}} and
  {{user}}.``: instructions, not the sheet; it names the character and the user;
- the description as it is;
- the scenario as ``[Circumstances and context of the dialogue: {{scenario}}]`` and the
  personality as ``[{{char}}'s personality: {{personality}}]`` (its default formats);
- markers such as ``[Start a new Chat]`` and ``[Example Chat]``, which mean nothing here.

With "Character Names Behavior: Completion Object" each turn carries ``name``, with spaces
replaced by underscores (``Edda_Varn``). The default formats and markers are SillyTavern's
``default_settings`` in ``public/scripts/openai.js``. Everything else a system message
holds is kept as sheet text.

The card's example dialogue arrives as system messages named ``example_user`` and
``example_assistant`` (``public/scripts/openai.js`` 664-698, ``setOpenAIMessageExamples``).
The Limamono format has no place for examples (the model is trained on sheets and real
turns only; as sheet lines they would be unlabelled dialogue in the Instruction block, as
turns they would pass for history), so they are left out, and ``example_messages`` counts
them for the server's note. The exported Text Completion presets need SillyTavern's
"Example Messages Behavior: Never include examples" for the same prompt
(``docs/SILLYTAVERN.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from limamono.cards.sheet import PERSONALITY_PREFIX
from limamono.core import format as fmt
from limamono.core.conversation import Conversation

# The sheet is parsed with plain string searches, not regular expressions: a lazy group
# followed by ``.*`` backtracks quadratically on text such as "[" + "x's personality: " * N
# (issue 24), and this runs on every chat request. Each function below is linear in its text.
_MAIN_HEAD = "Write "
_MAIN_SEP = "'s next reply in a fictional chat between "
#: A main prompt naming a longer character is not SillyTavern's: its text is kept as sheet.
MAX_NAME_CHARS = 256
_SCENARIO_HEAD = "[Circumstances and context of the dialogue: "
_PERSONALITY_SEP = "'s personality: "
#: SillyTavern's markers and nudges with nothing of the sheet in them (``default_*_prompt``
#: in ``public/scripts/openai.js`` 1.12.6): the exact ones, and the heads of the ones that
#: end with free text (``{{lastChatMessage}}``, ``{{group}}``, ``{{char}}``, ``{{user}}``),
#: which may itself hold ``]`` or newlines: such a marker is the whole message from its
#: head to a final ``]``.
_MARKERS = frozenset({"[Start a new Chat]", "[Example Chat]"})
#: The head of SillyTavern's impersonation prompt (``default_impersonation_prompt``,
#: ``public/scripts/openai.js`` line 100), sent last when the user clicks Impersonate.
IMPERSONATION_HEAD = "[Write your next reply from the point of view of "
#: The head of SillyTavern's group nudge (``default_group_nudge_prompt``, ``openai.js``
#: line 111), sent after a group chat's history: the member it names replies next.
GROUP_NUDGE_HEAD = "[Write the next reply only as "
_MARKER_HEADS = (
    "[Continue the following message. ",
    "[Start a new group chat. Group members: ",
    GROUP_NUDGE_HEAD,
    IMPERSONATION_HEAD,
)
#: The ``name`` SillyTavern gives the system messages of a card's example dialogue.
EXAMPLE_NAMES = frozenset({"example_user", "example_assistant"})


def is_marker(text: str) -> bool:
    """Whether a system message's (stripped) text is one of SillyTavern's markers or
    nudges, which mean nothing in a Limamono prompt (linear in the text)."""
    if text in _MARKERS:
        return True
    return text.endswith("]") and text.startswith(_MARKER_HEADS)


def example_messages(messages: Sequence[dict[str, Any]]) -> int:
    """How many of ``messages`` are example dialogue (left out of the prompt)."""
    return sum(1 for m in messages if _is_example(m))


def asks_impersonation(messages: Sequence[dict[str, Any]]) -> bool:
    """Whether the body ends with SillyTavern's impersonation prompt: the user clicked
    Impersonate and wants their own next turn written (``openai.js`` 999-1000 puts the
    prompt last). A customised impersonation prompt is not recognised."""
    return _ends_with_marker(messages, IMPERSONATION_HEAD)


def ends_with_group_nudge(messages: Sequence[dict[str, Any]]) -> bool:
    """Whether the body ends with SillyTavern's group nudge: the member it names is to write
    a new reply, even when the last turn is another member's (``openai.js`` 857-860 puts
    the nudge after the history; a Continue puts its own nudge or the partial reply after
    it). A customised group nudge is not recognised."""
    return _ends_with_marker(messages, GROUP_NUDGE_HEAD)


def _ends_with_marker(messages: Sequence[dict[str, Any]], head: str) -> bool:
    if not messages or messages[-1].get("role") != "system":
        return False
    content = messages[-1].get("content")
    text = content.strip() if isinstance(content, str) else ""
    return text.startswith(head) and text.endswith("]")


def _is_example(message: dict[str, Any]) -> bool:
    return message.get("role") == "system" and message.get("name") in EXAMPLE_NAMES


def conversation(messages: Sequence[dict[str, Any]], char_name: str | None = None,
                 user_name: str | None = None) -> Conversation:
    """The conversation of an OpenAI-style message list, SillyTavern's shapes understood.

    Args:
        messages: ``{"role", "content", "name"?, "length"?}`` dicts, oldest first.
        char_name: the character's name when the client names it (our extension field).
        user_name: the user's name when no message names it.

    Raises:
        limamono.core.format.FormatError: naming the message at fault.
    """
    sheet_parts: list[str] = []
    scenario = personality = ""
    main: tuple[str, str] | None = None
    for i, m in enumerate(messages):
        if m.get("role") != "system" or _is_example(m):
            continue
        text = _text(m, i).strip()
        if (names := main_prompt_names(text)) and main is None:
            main = names  # SillyTavern's main prompt: names, not sheet text
        elif (found := scenario_text(text)) is not None:
            scenario = found.strip()
        elif (found := personality_text(text)) is not None:
            personality = found.strip()
        elif text and not is_marker(text):
            sheet_parts.append(text)
    system_text = "\n".join(_text(m, i) for i, m in enumerate(messages)
                            if m.get("role") == "system" and not _is_example(m))
    char = (char_name or _spoken_name(messages, "assistant", system_text)
            or (main[0] if main else None))
    user = (_spoken_name(messages, "user", system_text) or user_name
            or (main[1] if main else None) or "User")
    lines = [PERSONALITY_PREFIX + personality] if personality else []
    lines += sheet_parts
    if scenario:
        lines.append(fmt.SCENARIO_PREFIX + scenario)
    # Same positions, so an error still names the message index the client sent.
    cleaned, sheet = [], "\n".join(lines)
    for m in messages:
        if m.get("role") == "system":
            cleaned.append({"role": "system", "content": sheet})
            sheet = ""
        else:
            turn = {k: v for k, v in m.items() if k != "name"}
            if isinstance(turn.get("content"), str):
                own = char if m.get("role") == "assistant" else user
                turn["content"] = without_name_prefix(turn["content"], own)
            cleaned.append(turn)
    return fmt.from_chat_messages(cleaned, user_name=user, char_name=char)


def without_name_prefix(text: str, name: str | None) -> str:
    """``text`` without its speaker's ``Name: `` in front.

    SillyTavern puts the speaker's name in the content in group chats and with "Character
    Names Behavior: Message Content" (``Mara Quell: Mara was already...``); the format
    writes the name itself, so it would appear twice. Another speaker's name (a group
    member who is not the character replying) is kept: the format has one character.
    """
    prefix = f"{name}: "
    return text[len(prefix):] if name and text.startswith(prefix) else text


def main_prompt_names(text: str) -> tuple[str, str] | None:
    """(char, user) when ``text`` starts with SillyTavern's main prompt, else None.

    The prompt is ``Write {{char}}'s next reply in a fictional chat between {{char}} and
    {{user}}.`` on its first line; the shortest names that fit are taken. Linear time: only
    names up to ``MAX_NAME_CHARS`` are tried, so each candidate costs a bounded comparison.
    """
    if not text.startswith(_MAIN_HEAD):
        return None
    line = text.split("\n", 1)[0]
    at = line.find(_MAIN_SEP, len(_MAIN_HEAD) + 1)
    while 0 <= at <= len(_MAIN_HEAD) + MAX_NAME_CHARS:
        char = line[len(_MAIN_HEAD):at]
        rest = at + len(_MAIN_SEP)
        if line.startswith(char + " and ", rest):
            user_start = rest + len(char) + len(" and ")
            end = line.find(".", user_start + 1)
            if end > 0:
                return char, line[user_start:end]
        at = line.find(_MAIN_SEP, at + 1)
    return None


def scenario_text(text: str) -> str | None:
    """The scenario of ``[Circumstances and context of the dialogue: TEXT]``, else None."""
    if text.startswith(_SCENARIO_HEAD) and text.endswith("]") and \
            len(text) > len(_SCENARIO_HEAD):
        return text[len(_SCENARIO_HEAD):-1]
    return None


def personality_text(text: str) -> str | None:
    """The personality of ``[{{char}}'s personality: TEXT]``, else None.

    The name is one line without ``]`` and ends at the first ``'s personality: ``, as the
    shortest match of SillyTavern's format would; the text is everything up to the final
    ``]``. Linear time.
    """
    if not text.startswith("[") or not text.endswith("]"):
        return None
    at = text.find(_PERSONALITY_SEP, 2)  # the name has at least one character
    if at < 0 or at + len(_PERSONALITY_SEP) > len(text) - 1:
        return None
    name = text[1:at]
    if "]" in name or "\n" in name:
        return None
    return text[at + len(_PERSONALITY_SEP):-1]


def _spoken_name(messages: Sequence[dict[str, Any]], role: str, system_text: str,
                 ) -> str | None:
    """The ``name`` on a turn of ``role``; underscores become spaces when the sheet says so."""
    name = next((m["name"] for m in messages
                 if m.get("role") == role and isinstance(m.get("name"), str)
                 and m["name"].strip()), None)
    if name is None:
        return None
    spaced = name.strip().replace("_", " ")
    return spaced if spaced != name and spaced in system_text else name.strip()


def _text(message: dict[str, Any], index: int) -> str:
    content = message.get("content")
    if isinstance(content, list):  # OpenAI content parts: the text ones
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise fmt.FormatError("content must be text", message_index=index)
    return content
