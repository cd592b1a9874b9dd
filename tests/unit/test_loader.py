from pgfleet.embedding.loader import LoadProblem, read_docs


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


def test_jsonl_lines_postgresql_cannot_store_are_reported_and_the_rest_kept(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"content": "first"}\n'
                    '{"content": "a\\u0000b"}\n'
                    '{"content": "\\ud800"}\n'
                    '{"content": "ok", "metadata": {"k": "x\\u0000y"}}\n'
                    '{"content": "ok", "metadata": {"k": ["\\udfff"]}}\n'
                    '{"content": "ok", "metadata": {"\\u0000": 1}}\n'
                    '{"content": "ok", "metadata": {"n": NaN}}\n'
                    '{"content": "a pair \\ud83d\\ude00 is fine"}\n'
                    '{"content": "last"}\n', "utf-8")
    problems: list[LoadProblem] = []
    docs = list(read_docs(path, problems))
    assert [c for c, _ in docs] == ["first", "a pair \U0001f600 is fine", "last"]
    assert [p.line for p in problems] == [2, 3, 4, 5, 6, 7]
    reasons = [str(p) for p in problems]
    assert "docs.jsonl:2" in reasons[0] and "content" in reasons[0] and "NUL" in reasons[0]
    assert "content" in reasons[1] and "surrogate" in reasons[1]
    assert "metadata" in reasons[2] and "NUL" in reasons[2]
    assert "metadata" in reasons[3] and "surrogate" in reasons[3]
    assert "metadata" in reasons[4] and "NUL" in reasons[4]
    assert "NaN" in reasons[5]


def test_a_jsonl_line_ends_at_a_newline_only(tmp_path):
    path = tmp_path / "docs.jsonl"
    # U+2028 and U+0085 may stand as they are inside a JSON string
    path.write_text('{"content": "one\u2028still one\x85and still"}\r\nbad\n{"content": "two"}\n',
                    "utf-8")
    problems: list[LoadProblem] = []
    assert [c for c, _ in read_docs(path, problems)] == ["one\u2028still one\x85and still",
                                                         "two"]
    assert [p.line for p in problems] == [2]


def test_a_number_too_long_to_read_is_a_bad_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"content": "x", "metadata": {"n": %s}}\n{"content": "y"}\n' % ("9" * 5000),
                    "utf-8")
    problems: list[LoadProblem] = []
    assert [c for c, _ in read_docs(path, problems)] == ["y"]
    assert [p.line for p in problems] == [1] and "invalid JSON" in problems[0].message
