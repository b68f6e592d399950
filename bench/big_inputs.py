"""Write a big SillyTavern chat or conversation YAML for the big-input figures of
docs/BENCHMARKS.md (issue 24, defect 10). Write them under /tmp; never commit them.

    python bench/big_inputs.py st 85 /tmp/st_85MB.jsonl      # the audit's chat lines
    python bench/big_inputs.py yaml 85 /tmp/conv_85MB.yaml   # one conversation, many turns
"""

import json
import sys

HEADER = {"user_name": "U", "character_name": "C", "create_date": "x", "chat_metadata": {}}
# The audit's message line (repros/audit-3/10_st_import_1GB.sh).
LINE = {"name": "U", "is_user": True, "is_system": False, "send_date": "x",
        "mes": "hello " * 10}
YAML_HEAD = ("character: {name: Mira, description: A baker.}\nuser: {name: Tom}\n"
             "scenario: A cafe.\nmessages:\n")
TURN = ('  - role: {role}\n    text: "Mira smiles and hands over a warm loaf of bread, '
        'still steaming."\n')


def main() -> None:
    kind, size_mb, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    target = size_mb * 1_000_000
    with open(out, "w", encoding="utf-8") as f:
        if kind == "st":
            f.write(json.dumps(HEADER) + "\n")
            block = (json.dumps(LINE) + "\n") * 10_000
        else:
            f.write(YAML_HEAD)
            block = "".join(TURN.format(role="char" if i % 2 == 0 else "user")
                            for i in range(1000))
        written = 0
        while written < target:
            f.write(block)
            written += len(block)


if __name__ == "__main__":
    main()
