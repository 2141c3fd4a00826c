#!/usr/bin/env python3
"""Writes a man page (man(7) roff) for a swift-argument-parser command from
what the built binary says about itself (`--experimental-dump-help`), so the
page cannot drift from the code: every option, default, value list and the
discussion come from the same declarations as --help.

    scripts/manpage.py BINARY VERSION > NAME.1

(swift-argument-parser's generate-manual plugin does the same, but as a
plugin it first builds the package again in debug mode: minutes in CI for
the same JSON.)"""
import json
import subprocess
import sys


def escape(text):
    lines = []
    for line in text.replace("\\", "\\e").split("\n"):
        # A line starting with . or ' would be a roff request.
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def paragraphs(text):
    """Prose paragraphs are filled; indented ones (examples) kept as they are."""
    out = []
    for paragraph in text.split("\n\n"):
        lines = paragraph.split("\n")
        out.append(".PP")
        if any(line.startswith("  ") for line in lines[1:]) or lines[0].startswith("  "):
            out += [".nf", escape(paragraph), ".fi"]
        else:
            out.append(escape(" ".join(lines)))
    return out


def option_names(argument):
    names = []
    for name in argument.get("names", []):
        prefix = "-" if name["kind"] in ("short", "longWithSingleDash") else "--"
        # \- is the hyphen-minus a shell wants (a bare - may print as a hyphen).
        names.append("\\fB" + escape(prefix + name["name"]).replace("-", "\\-") + "\\fR")
    text = ", ".join(names)
    if argument["kind"] == "option":
        text += " \\fI<" + escape(argument.get("valueName", "value")) + ">\\fR"
    elif argument["kind"] == "positional":
        text = "\\fI<" + escape(argument.get("valueName", "value")) + ">\\fR"
    return text


def describe(argument):
    text = escape(argument.get("abstract", ""))
    values = argument.get("allValueStrings") or argument.get("allValues")
    if values:
        text += " (values: " + ", ".join(escape(v) for v in values) + ")"
    if "defaultValue" in argument:
        text += " (default: " + escape(argument["defaultValue"]) + ")"
    discussion = argument.get("discussion")
    if isinstance(discussion, str) and discussion:
        text += "\n.br\n" + escape(discussion)
    return text


def options(command, out):
    """The options in --help's order and groups: each titled group (its
    sectionTitle) a subsection, the untitled ones after them, as --help
    shows them."""
    shown = [a for a in command.get("arguments", []) if a.get("shouldDisplay", True)]
    titles = []
    for argument in shown:
        title = argument.get("sectionTitle")
        if title and title not in titles:
            titles.append(title)
    groups = [(title, [a for a in shown if a.get("sectionTitle") == title]) for title in titles]
    untitled = [a for a in shown if not a.get("sectionTitle")]
    if titles and untitled:
        groups.append(("Other options", untitled))
    elif untitled:
        groups.append((None, untitled))
    for title, arguments in groups:
        if title:
            out.append(".SS " + escape(title))
        option_entries(arguments, out)


def option_entries(arguments, out):
    for argument in arguments:
        out.append(".TP")
        out.append(option_names(argument))
        out.append(describe(argument))


def extra_sections(binary, command):
    """SIGNALS, EXIT STATUS, FILES and METRICS, from the binary's hidden
    `manual-sections` subcommand (the code that decides them), for a
    command that has one; the test tools have none."""
    if not any(s["commandName"] == "manual-sections" for s in command.get("subcommands", [])):
        return []
    sections = json.loads(subprocess.run([binary, "manual-sections"], check=True,
                                         capture_output=True, text=True).stdout)["sections"]
    out = []
    for section in sections:
        out.append(".SH %s" % escape(section["title"]))
        for entry in section["entries"]:
            if entry["term"]:
                out += [".TP", "\\fB%s\\fR" % escape(entry["term"]).replace("-", "\\-"), escape(entry["text"])]
            else:
                out += [".PP", escape(entry["text"])]
    return out


def main():
    binary, version = sys.argv[1], sys.argv[2]
    info = json.loads(subprocess.run([binary, "--experimental-dump-help"], check=True,
                                     capture_output=True, text=True).stdout)
    command = info["command"]
    name = command["commandName"]
    out = [
        '.TH "%s" "1" "" "%s %s" "User Commands"' % (name.upper(), name, version),
        ".SH NAME",
        "%s \\- %s" % (escape(name), escape(command.get("abstract", ""))),
        ".SH SYNOPSIS",
        ".B %s" % escape(name),
        "[\\fIoptions\\fR]",
    ]
    subcommands = [s for s in command.get("subcommands", []) if s.get("shouldDisplay", True) and s["commandName"] != "help"]
    for sub in subcommands:
        out += [".br", ".B %s %s" % (escape(name), escape(sub["commandName"])), "[\\fIoptions\\fR]"]
    out += [".SH DESCRIPTION", escape(command.get("abstract", ""))]
    discussion = command.get("discussion")
    if discussion:
        out += paragraphs(discussion)
    out.append(".SH OPTIONS")
    options(command, out)
    for sub in subcommands:
        out += [".SH COMMAND: %s" % escape(sub["commandName"].upper()), escape(sub.get("abstract", ""))]
        if sub.get("discussion"):
            out += paragraphs(sub["discussion"])
        options(sub, out)
    out += extra_sections(binary, command)
    out += [".SH VERSION", "%s %s" % (escape(name), escape(version))]
    print("\n".join(out))


if __name__ == "__main__":
    main()
