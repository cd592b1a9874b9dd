from pgfleet.loader import LoadProblem, read_docs


def test_jsonl_reports_each_bad_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"content": "ok", "metadata": {"a": 1}}\n'
                    'not json\n'
                    '{"text": "no content"}\n'
                    '"a bare string"\n'
                    '{"content": "x", "metadata": [1]}\n', "utf-8")
    problems: list[LoadProblem] = []
    docs = list(read_docs(path, problems))
    assert docs == [("ok", {"a": 1}), ("a bare string", {})]
    assert [p.line for p in problems] == [2, 3, 5]
    assert "invalid JSON" in str(problems[0]) and "docs.jsonl:2" in str(problems[0])


def test_markdown_sections_and_text_paragraphs(tmp_path):
    md = tmp_path / "a.md"
    md.write_text("intro\n\n# One\nbody one\n\n## Two\nbody two\n", "utf-8")
    txt = tmp_path / "b.txt"
    txt.write_text("first para\nstill first\n\n\nsecond para\n", "utf-8")
    problems: list[LoadProblem] = []
    assert [c for c, _ in read_docs(md, problems)] == ["intro", "# One\nbody one",
                                                       "## Two\nbody two"]
    assert [c for c, _ in read_docs(txt, problems)] == ["first para\nstill first", "second para"]
    assert not problems


def test_nul_and_bad_encoding_are_reported(tmp_path):
    nul = tmp_path / "n.txt"
    nul.write_text("a\x00b", "utf-8")
    latin = tmp_path / "l.txt"
    latin.write_bytes(b"caf\xe9")
    problems: list[LoadProblem] = []
    assert [c for c, _ in read_docs(nul, problems)] == ["ab"]
    assert list(read_docs(latin, problems)) == []
    assert "NUL" in str(problems[0]) and "not UTF-8" in str(problems[1])
