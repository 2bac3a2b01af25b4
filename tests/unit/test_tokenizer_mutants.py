"""The tokens of messages an admin or a spammer could send, each pinned where a mutation review
of the tokenizer (REVIEW of the twenty-second session) found the tests let a change through:
spellings SpamBayes gives, what is read and what is not, and the caps that only a message
built to hide its text reaches. About output only, so a faster tokenizer must pass them as is."""

from __future__ import annotations

import base64

from spambridge.bayes.tokenizer import limits_for, tokenize, unread
from spambridge.config import BayesConfig


def _text(body: bytes, head: bytes = b"") -> list[str]:
    """The tokens of a one-part message with `head` fields and `body`."""
    return tokenize(b"From: a@example.com\nSubject: hi\n" + head + b"\n" + body)


def _with(prefix: str, tokens: list[str]) -> set[str]:
    return {t for t in tokens if t.startswith(prefix)}


def test_half_the_bytes_looked_at_may_be_text() -> None:
    """[bayes] max_bytes bounds the message looked at, and half of it the decoded text (so a
    part's text is never most of the work): words past that are not read."""
    limits = limits_for(BayesConfig(max_bytes=8192))
    body = b"filler " * 800 + b"lateword\n"  # 5.6 kB: within max_bytes, past half of it
    t = tokenize(b"Subject: hi\n\n" + body, limits)
    assert "filler" in t and "lateword" not in t
    assert "lateword" in tokenize(b"Subject: hi\n\n" + body[-3000:], limits)


def test_a_newsletter_of_a_thousand_links_reads_whole() -> None:
    """The URL cap is for floods of links (64,000 in 512 kB): a long link list (the
    SpamAssassin corpus' most has 3,131) has its every link read and is not called hiding."""
    body = b" ".join(b"http://site%d.example.com/page" % i for i in range(3200))
    t = _text(body)
    assert unread(t) == "" and "url:site3199" in t and "url:site0" in t


def test_a_page_of_entities_reads_whole() -> None:
    """The entity cap is for floods of them: a text of 5,000 numeric entities (a page in a
    non-Latin script written as &#NNN;) is decoded and is not called hiding."""
    t = _text(b"&#109;&#111;&#110;&#101;&#121; " * 1000, b"Content-Type: text/html\n")
    assert "money" in t and unread(t) == ""


def test_the_subject_gives_its_words_and_no_blank_run_of_the_field_separator() -> None:
    """The blanks after the colon are the field's syntax, not the subject's: "Subject: Hello"
    gives subject:Hello alone, no "subject: " punctuation run."""
    t = tokenize(b"Subject:   Hello\nFrom: a@example.com\n\nbody text\n")
    assert _with("subject:", t) == {"subject:Hello"}


def test_a_first_field_with_a_blank_before_its_colon_opens_the_header() -> None:
    """RFC 5322's obsolete syntax allows blanks before the colon, and a later field so
    written is read: so is a first one (the message then has a header, not a body only)."""
    t = tokenize(b"Subject : cheap meds\nFrom: a@example.com\n\nhello there\n")
    assert {"subject:cheap", "from:addr:example.com", "hello", "there"} <= set(t)
    assert "from:none" not in t


def test_adjacent_encoded_words_join_without_their_blank() -> None:
    """RFC 2047: a blank between two encoded words is not text, so a word split over two
    of them reads whole (spam splits "Free" so)."""
    t = tokenize(b"Subject: =?utf-8?q?Fr?= =?utf-8?q?ee?= now\n\nx\n")
    assert "subject:Free" in t and "subject:Fr" not in t and "subject:now" in t


def test_a_message_id_without_a_local_part_is_invalid() -> None:
    """SpamBayes' rule: a local part, "@", a domain; "<@example.com>" is not a Message-ID."""
    assert "message-id:invalid" in tokenize(b"Message-ID: <@example.com>\n\nx\n")
    assert "message-id:@example.com" in tokenize(b"Message-ID: <a@example.com>\n\nx\n")


_RECEIVED = (b"Received: from 203.0.113.9 (localhost) (may be forged)\n"
             b"\tby mx.example.org (Postfix) with ESMTP id 1; Fri, 27 Nov 2026 10:00:00 +0000\n"
             b"Received: from relay.example.net (198.51.100.7)\n"
             b"\tby mx.example.org with SMTP id 2; Fri, 27 Nov 2026 09:59:00 +0000\n"
             b"Received: from e.example.info (e.example.info [192.0.2.4]) by relay.example.net;\n"
             b"\tFri, 27 Nov 2026 09:58:00 +0000\n")


def test_received_lines_give_host_names_ip_prefixes_and_two_word_remarks() -> None:
    """SpamBayes' Received mining: a "from" host must end in a letter (a bare IP there is
    not a name, so none of its suffixes count), an IP in "(…)" counts as one in "[…]", and a
    remark is two words or more ("(localhost)" is a name, not a remark)."""
    t = tokenize(_RECEIVED + b"Subject: hi\n\nx\n")
    rec = _with("received:", t)
    assert {"received:(may be forged)", "received:198.51.100.7", "received:198.51.100",
            "received:relay.example.net", "received:example.net", "received:net",
            "received:e.example.info", "received:example.info", "received:info"} <= rec
    assert not {"received:9", "received:113.9", "received:(localhost)"} & rec


def test_a_top_hop_with_lmtp_only_after_its_date_is_not_a_delivery_hop() -> None:
    """Only what comes before the hop's ";" says who wrote it: words after the date do not
    make an ordinary hop a delivery one (which would drop it from the Received count)."""
    hop = (b"Received: from mail.example.com (mail.example.com [192.0.2.1])\n"
           b"\tby mx.example.org with ESMTP id 1; Fri, 27 Nov 2026 10:00:00 +0000\n"
           b"\tby x with LMTP\n")
    t = tokenize(hop + b"Subject: hi\n\nx\n")
    assert "header:Received:1" in t and "received:192.0.2.1" in t


def test_a_file_name_splits_at_backslashes_and_colons_too() -> None:
    """SpamBayes splits a file name into components at "/", "\\" and ":" (a Windows path)."""
    t = tokenize(b'Content-Type: application/octet-stream; name="C:\\\\Docs\\\\bill.exe"\n\nAAAA\n')
    assert {"filename:fname:c:\\docs\\bill.exe", "filename:fname comp:c",
            "filename:fname comp:docs", "filename:fname comp:bill.exe",
            "filename:fname piece:exe"} <= set(t)


def test_a_ucs2_part_reads_as_utf16() -> None:
    """"ucs-2" is a label of UTF-16 (WHATWG): its text gives the words a UTF-8 part gives."""
    body = base64.encodebytes("cheap pills today".encode("utf-16-le"))
    t = _text(body, b"Content-Type: text/plain; charset=ucs-2\n"
                    b"Content-Transfer-Encoding: base64\n")
    assert {"cheap", "pills", "today"} <= set(t)


def test_hex_entities_in_capitals_are_decoded() -> None:
    """&#x4F; is "O" as &#x4f; is: M&#x4F;NEY reads money."""
    t = _text(b"M&#x4F;NEY and m&#x6f;re\n", b"Content-Type: text/html\n")
    assert {"money", "more"} <= set(t)


def test_a_zero_size_clue_is_a_zero_not_a_number_starting_with_one() -> None:
    """SpamBayes' virus clue is a size of 0 (`0\\b`): "height=05" is no hidden element."""
    t = _text(b'<img height=05 width=0 src="x.png">\n', b"Content-Type: text/html\n")
    assert "virus:width=0" in t and "virus:height=0" not in t
    t = _text(b'<img width="0" src="x.png">\n', b"Content-Type: text/html\n")
    assert 'virus:width="0' in t


def test_uuencoded_files_give_their_names_not_their_lines() -> None:
    """Each uuencoded block (a long name, blanks after it, a second block) gives its mode and
    name pieces; its lines and its "end" are no words of the text."""
    name = b"the_quarterly_report_with_a_long_name_2026.zip"
    block = b"M9V]O9&)Y90H`\n`\nend\n"
    body = (b"see the file\nbegin 644 " + name + b"  \n" + block + b"and\nbegin 600 b.exe\n"
            + block + b"thanks\n")
    t = _text(body)
    assert {"uuencode mode:644", "uuencode:zip", "uuencode mode:600", "uuencode:exe",
            "thanks"} <= set(t)
    assert not {"m9v]o9&)y90h`", "end"} & set(t)


def test_a_long_url_is_read_to_its_end() -> None:
    """A URL is read up to 1,024 bytes: the pieces of a 300-byte tracking link all count as
    url: pieces, and none of its tail as a word of the text."""
    path = b"/".join(b"seg%03d" % i for i in range(40))
    t = _text(b"click http://track.example.com/" + path + b"/lastpiece now\n")
    assert {"url:track", "url:seg000", "url:seg039", "url:lastpiece", "now"} <= set(t)
    assert not [x for x in t if "seg039" in x and not x.startswith("url:")]


def test_a_url_ends_at_an_8bit_byte() -> None:
    """SpamBayes ends a URL at a byte of 0x7f or more (a Latin-1 "»" after a link)."""
    t = _text(b"see http://shop.example.com/deals\xbbtoday\n")
    assert {"url:shop", "url:deals"} <= set(t)
    assert not [x for x in t if x.startswith("url:deals") and x != "url:deals"]


def test_a_url_splits_at_a_dollar_sign_too() -> None:
    """SpamBayes splits a URL at ; ? : @ & = + , $ . and "/"."""
    t = _text(b"go http://shop.example.com/buy$now+cheap\n")
    assert {"url:buy", "url:now", "url:cheap"} <= set(t)


def test_what_a_browser_hides_is_not_read_and_what_it_shows_is() -> None:
    """A <noframes> region is hidden by every current browser and mail client, so its words
    are dropped as SpamBayes drops them; text with a "<" and ">" of its own ("less than 5 and
    more than 3") is not a tag; a <p> with long attributes still separates the words."""
    t = _text(b"<style>p {}</style>styled <noframes>decoyword</noframes>shown price < 5 "
              b"dollars and > 3 items "
              b'before<p class="x" style="margin:0;padding:0;color:red">after\n',
              b"Content-Type: text/html\n")
    assert {"styled", "shown", "dollars", "and", "items", "before", "after"} <= set(t)
    assert "decoyword" not in t and "beforeafter" not in t


def test_an_attachment_named_only_in_its_content_type_gives_the_name() -> None:
    """A Content-Disposition without filename= falls back on Content-Type's name=, as the
    email package's get_filename() does."""
    t = tokenize(b'Content-Type: application/octet-stream; name="bill.exe"\n'
                 b"Content-Disposition: attachment\n\nAAAA\n")
    assert {"content-disposition:attachment", "filename:fname:bill.exe",
            "filename:fname piece:exe"} <= set(t)


def test_a_tag_of_256_bytes_is_a_tag_and_one_of_257_is_text() -> None:
    """SpamBayes' tag: "<", up to 256 bytes without < or >, ">", removed with no blank (so
    tags inside a word do not split it); a longer run is text."""
    def tag(n: int) -> bytes:
        return b"<span title='" + b"x" * (n - 13) + b"'>"  # n bytes between < and >
    assert len(tag(256)) == 258
    t = _text(b"vi" + tag(256) + b"agra\n", b"Content-Type: text/html\n")
    assert "viagra" in t
    t = _text(b"vi" + tag(257) + b"agra\n", b"Content-Type: text/html\n")
    assert "viagra" not in t


def test_delimiter_lines_with_a_stray_carriage_return_still_split_the_parts() -> None:
    """A delimiter line may end in blanks and a CR (a client that wrote CR CR LF): RFC 2046's
    transport padding, and the email package splits there too."""
    msg = (b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\r\n'
           b"Content-Type: text/plain\r\n\r\nhidden pharmacy words\r\n--b--\r\r\n")
    t = tokenize(msg)
    assert {"content-type:text/plain", "pharmacy"} <= set(t)
    assert "control: broken multipart" not in t


def test_a_no_break_space_does_not_split_a_word() -> None:
    """SpamBayes split bytes (Python 2 str): a Latin-1 no-break space is part of a word, as
    in a database it trained."""
    t = _text(b"price\xa0now cheap\n")
    assert "price\xa0now" in t and "price" not in t and "cheap" in t


def _nested(levels: int, inner: bytes) -> bytes:
    """`levels` messages, each the message/rfc822 body of the one outside it, then `inner`."""
    return b"Subject: fwd\nContent-Type: message/rfc822\n\n" * levels + inner


_TEXT_PART = b"Content-Type: text/plain\n\ncheap pharmacy\n"
_MULTIPART = (b'Content-Type: multipart/mixed; boundary="b"\n\n--b\n' + _TEXT_PART
              + b"--b--\n")


def test_the_depth_cap_reads_a_hundred_forwarded_messages_and_no_more() -> None:
    """Messages forwarded as attachments 100 deep are read to the text; one more level, or a
    multipart at the hundredth, is past the depth cap, and `unread` says so."""
    t = tokenize(_nested(100, _TEXT_PART))
    assert "pharmacy" in t and unread(t) == ""
    for msg in (_nested(101, _TEXT_PART), _nested(100, _MULTIPART)):
        t = tokenize(msg)
        assert "pharmacy" not in t and unread(t) == "depth"


def test_every_text_type_is_read() -> None:
    """SpamBayes reads every text/* part, not only plain and HTML (text/enriched, text/rtf…)."""
    t = _text(b"cheap <bold>pharmacy</bold>\n", b"Content-Type: text/enriched\n")
    assert {"content-type:text/enriched", "cheap", "pharmacy"} <= set(t)


def test_a_base64_text_part_within_the_text_cap_is_read_to_its_end() -> None:
    """The text cap counts decoded bytes: a base64 part whose text fits is read whole,
    though its encoded form is a third longer than the cap."""
    limits = limits_for(BayesConfig(max_bytes=8192))  # 4,096 bytes of text
    text = b"filler " * 550 + b"lastword\n"  # 3,859 bytes, 5.2 kB as base64
    msg = (b"Subject: hi\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\n"
           + base64.encodebytes(text))
    assert 4096 < len(msg) < 8192
    assert "lastword" in tokenize(msg, limits)


def test_an_attached_message_without_a_header_has_its_text_read() -> None:
    """A message/rfc822 part whose body opens with no header field is a message of body only
    (text/plain, as the email package and SpamBayes read it, and a mail client shows it):
    its words were skipped, so a spam put them there to hide them, with no `unread` said."""
    msg = (b'Subject: hi\nContent-Type: multipart/mixed; boundary="b"\n\n--b\n'
           b"Content-Type: text/plain\n\nsee attached\n--b\nContent-Type: message/rfc822\n\n"
           b"<b>cheap pharmacy</b> online\n--b--\n")
    t = tokenize(msg)
    assert {"content-type:message/rfc822", "cheap", "pharmacy", "online"} <= set(t)


def test_damaged_base64_in_a_utf16_part_says_so() -> None:
    """A UTF-16 part whose base64 is damaged is read as far as it goes, and says it could
    not be decoded, as any other part does."""
    body = base64.encodebytes("cheap pills today".encode("utf-16-le"))[:-2] + b"!*\n"
    t = _text(body, b"Content-Type: text/plain; charset=utf-16le\n"
                    b"Content-Transfer-Encoding: base64\n")
    assert "control: couldn't decode" in t and "cheap" in t


def test_a_blank_text_part_counts_as_an_empty_one() -> None:
    """A text part of blanks only has no text: the same token an empty part gives."""
    for body in (b"", b"  \n\t\n"):
        assert "control: payload is None" in _text(body)


def test_a_message_of_header_fields_only_gives_its_header_tokens() -> None:
    """A message with no blank line after its fields (a file cut after its header, or mail
    with no body) is all header: its fields are read as fields, not as body words."""
    t = tokenize(b"From: Big Deals <promo@deals.example.com>\nSubject: cheap meds\n")
    assert {"from:addr:deals.example.com", "subject:cheap", "subject:meds"} <= set(t)
    assert "from:none" not in t and "promo@deals.example.com>" not in t


def test_exactly_as_many_entities_as_the_cap_decodes_all_and_hides_nothing() -> None:
    """The entity cap reports hiding only when an entity is left undecoded after it: 10,000
    entities, all decoded, are not a message built to hide its text."""
    t = _text(b"&#109;&#111;&#110;&#101;&#121; " * 2000, b"Content-Type: text/html\n")
    assert "money" in t and unread(t) == ""


def test_header_fields_past_the_cap_are_reported_unread() -> None:
    """Fields are read up to max_headers (500) per part: a spam that put 500 junk fields
    before its Content-Transfer-Encoding (3.6 kB) had its base64 text read as one skip:
    token, with nothing said. The 500th field is still read; past it, `unread` says so."""
    def msg(junk: int) -> bytes:
        return (b"From: a@example.org\nSubject: hello\n" + b"X-A: 1\n" * junk
                + b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n"
                + base64.encodebytes(b"cheap pharmacy winner\n"))
    t = tokenize(msg(496))  # the encoding is the 500th field
    assert "pharmacy" in t and unread(t) == ""
    t = tokenize(msg(497))
    assert "pharmacy" not in t and unread(t) == "headers"
    part = b'Content-Type: multipart/mixed; boundary="b"\n\n--b\n' + msg(499) + b"--b--\n"
    assert unread(tokenize(b"Subject: hi\n" + part)) == "headers"  # in a part too


def test_a_content_type_with_a_blank_inside_is_plain_text() -> None:
    """"text /html" is no type: the part is text/plain and its words are read."""
    t = _text(b"cheap pharmacy\n", b"Content-Type: text /html\n")
    assert {"content-type:text/plain", "cheap", "pharmacy"} <= set(t)


def test_quoted_parameters_unquote_as_the_email_package_does() -> None:
    """An empty quoted name is no name; \\" inside quotes is a quote."""
    t = tokenize(b'Content-Type: application/octet-stream; name=""\n\nAAAA\n')
    assert not _with("filename:", t)
    t = tokenize(b'Content-Type: application/octet-stream; name="a\\"b.exe"\n\nAAAA\n')
    assert {'filename:fname:a"b.exe', "filename:fname piece:exe"} <= set(t)


def test_word_rules_in_the_subject_and_for_addresses() -> None:
    """A 12-character subject word is a word; a long word with two "@", or with no dot,
    is no address (SpamBayes' rule)."""
    t = tokenize(b"Subject: twelvechars1 deal\n\nsee a@b@example.com postmaster@localhost\n")
    assert {"subject:twelvechars1", "subject:deal", "skip:a 10", "skip:p 20"} <= set(t)
    assert not _with("email ", t) and not _with("8bit%", t)  # no 8-bit share of ASCII


def test_parameter_names_in_capitals_count() -> None:
    """Parameter names are case-insensitive (RFC 2045): BOUNDARY= splits the parts."""
    t = tokenize(b'Subject: hi\nContent-Type: multipart/mixed; BOUNDARY="b"\n\n--b\n'
                 b"Content-Type: text/plain\n\ncheap pharmacy\n--b--\n")
    assert {"content-type:text/plain", "pharmacy"} <= set(t)
    assert "control: broken multipart" not in t


def test_rfc2231_parameters_read_as_the_email_package_reads_them() -> None:
    """name*=charset''%-escaped, name*0/name*1 pieces joined (preferred to a plain name=),
    a lone quote in a name*= value kept, and the first of two same-named parameters."""
    def names(ctype: bytes) -> set[str]:
        return _with("filename:fname:", tokenize(b"Content-Type: " + ctype + b"\n\nAAAA\n"))
    assert names(b"application/x; name*=utf-8''bill%2Eexe") == {"filename:fname:bill.exe"}
    assert names(b'application/x; name="x.txt"; name*0="bill"; name*1=".exe"') == {
        "filename:fname:bill.exe"}
    assert names(b"application/x; name*=it's.exe") == {"filename:fname:it's.exe"}
    assert names(b'application/x; name="first.exe"; name="second.zip"') == {
        "filename:fname:first.exe"}


def test_only_http_https_and_ftp_urls_are_cracked_and_their_end_punctuation_dropped() -> None:
    """SpamBayes cracks http, https and ftp URLs only ("foo://…" is a word of the text) and
    drops the . : ? ! / a URL ends with (a sentence's end, not the link's)."""
    t = _text(b"see foo://bar.example.com and http://shop.example.com//buy!\n")
    assert {"skip:f 20", "proto:http", "url:buy"} <= set(t)
    assert not {"http", "url:"} & set(t)  # the scheme is no word, "//" no empty piece
    assert _with("proto:", t) == {"proto:http"} and not _with("url:bar", t)
    assert not [x for x in t if x.startswith("url:buy") and x != "url:buy"]


def test_encoded_words_with_a_language_or_without_padding() -> None:
    """RFC 2231's "charset*lang" in an encoded word names the charset alone, and a "B" word
    whose padding was left off decodes (as mail clients decode it); one that cannot be
    decoded keeps its text."""
    t = tokenize(b"Subject: =?utf-8*en?q?hola?= and =?utf-8?b?Y2hlYXA?=\n\nx\n")
    assert {"subjectcharset:utf-8", "subject:hola", "subject:cheap"} <= set(t)
    assert "subjectcharset:utf-8*en" not in t
    t = tokenize(b"Subject: =?utf-8?b?pharmacy1?= now\n\nx\n")  # 9 letters: no base64
    assert "subject:pharmacy1" in t  # kept as it stands, not dropped


def test_a_url_next_to_a_word_leaves_the_word_apart() -> None:
    """A cracked URL leaves a blank where it stood: the words on either side stay apart."""
    t = _text(b'link:"http://x.example.com/"pharmacy\n')
    assert {'link:"', '"pharmacy', "url:x"} <= set(t)


def test_a_part_labelled_base64_that_is_not_reads_as_a_mail_client_shows_it() -> None:
    """Plain text labelled base64 is decoded (to junk, as a mail client shows it), as the email
    package does; its words are not read as if the label were absent."""
    t = _text(b"Hello there, cheap pills!\n", b"Content-Transfer-Encoding: base64\n")
    assert "cheap" not in t and "pills!" not in t


_CJK = "日本語のテキスト"


def _utf16_part(text: str, codec: str) -> list[str]:
    return _text(base64.encodebytes(text.encode(codec)),
                 b"Content-Type: text/plain; charset=utf-16\n"
                 b"Content-Transfer-Encoding: base64\n")


def test_utf16_without_a_bom_guesses_its_byte_order_from_its_text() -> None:
    """With no BOM, the order in which ASCII's NUL bytes fall where they should, over the
    part's first 4 kB (not its first characters); with no NULs, little-endian (WHATWG). A
    broken unit is U+FFFD, not dropped."""
    utf8 = set(_text(_CJK.encode()))
    assert set(_utf16_part(_CJK, "utf-16-le")) >= utf8 - {"charset:utf-16"}
    assert "cheap" in _utf16_part("日本 cheap pills", "utf-16-be")
    broken = "abc".encode("utf-16-le") + b"\x00\xd8" + "def".encode("utf-16-le")
    t = _text(base64.encodebytes(broken), b"Content-Type: text/plain; charset=utf-16le\n"
                                          b"Content-Transfer-Encoding: base64\n")
    assert "abc\xef\xbf\xbddef" in t and "abcdef" not in t


def test_more_base64_after_the_padding_is_read_at_nine_tenths_ascii() -> None:
    """A second base64 block after the first one's padding is read when what it decodes to
    is 90 % ASCII text or more (here exactly), as mail clients decode past the padding."""
    body = base64.encodebytes(b"hello world\n\n") + base64.encodebytes(b"pharmacy!\xe9")
    t = _text(body, b"Content-Transfer-Encoding: base64\n")
    assert {"hello", "pharmacy!\xe9"} <= set(t)


def test_a_quoted_pair_in_a_display_name_is_its_character() -> None:
    t = tokenize(b'From: "Big\\Deals" <promo@deals.example.com>\n\nx\n')
    assert "from:name:bigdeals" in t


def test_an_entity_past_latin1_is_a_question_mark_and_the_text_is_read() -> None:
    """&#256; and above have no byte: "?" stands for them, and the rest of the text is read."""
    t = _text(b"cheap &#256; pills x&#256;y\n", b"Content-Type: text/html\n")
    assert {"cheap", "pills", "x?y"} <= set(t)
    assert not _with("control:", t)


def test_header_values_that_make_one_token_are_cut_at_200_characters() -> None:
    """X-Mailer, a Message-ID's domain and Content-Disposition each make one token, whole up
    to 200 characters (a real mailer's name is), cut there (a sender's 100 kB one is not)."""
    mailer = b"Microsoft Outlook Express 6.00.2800.1106"
    domain = b"d" * 300 + b".example.com"
    t = tokenize(b"X-Mailer: " + mailer + b"\nMessage-ID: <a@" + domain + b">\n"
                 b"Content-Disposition: inline; filename=\"a-rather-long-name.txt\"\n\nx\n")
    assert "x-mailer:" + mailer.lower().decode() in t
    assert "message-id:@" + "d" * 200 in t
    assert 'content-disposition:inline; filename="a-rather-long-name.txt"' in t
    t = tokenize(b"X-Mailer: " + b"m" * 300 + b"\n\nx\n")
    assert "x-mailer:" + "m" * 200 in t


def test_damaged_base64_is_repaired_and_says_so() -> None:
    """A base64 text with a stray letter left over (17 letters) decodes as far as it goes,
    its last partial quad dropped, and says it could not be decoded; a 20 % non-text second
    block after the padding that is no UTF-8 either is a footer's letters, not more text."""
    t = _text(b"Y2hlYXAgcGlsbHMgx\n", b"Content-Transfer-Encoding: base64\n")
    assert {"cheap", "pills", "control: couldn't decode"} <= set(t)
    body = (base64.encodebytes(b"hello world\n\n")  # ends in padding
            + base64.encodebytes(b"pharmacy\xff\xfe\xfdabcdefghi"))
    t = _text(body, b"Content-Transfer-Encoding: base64\n")
    assert "hello" in t and "skip:p 20" not in t


def test_a_lone_carriage_return_separates_words() -> None:
    """CR LF line ends become LF; a CR on its own is whitespace between two words."""
    t = tokenize(b"Subject: hi\r\nCc: a@example.com, b@example.net\r\n\r\ncheap\rpills\r\n")
    assert {"cheap", "pills", "cc:2**1"} <= set(t) and "cheappills" not in t


def test_every_address_field_of_a_name_counts_and_their_odd_items() -> None:
    """Two To: fields are one list; an item that is a comment only is a name without an
    address; a Received host in capitals reads in lower case."""
    t = tokenize(b"To: a@example.com\nTo: b@example.net, (Friends)\n"
                 b"Received: from MAIL.Example.COM (mail [192.0.2.1]) by mx\n\nx\n")
    assert {"to:addr:example.com", "to:addr:example.net", "to:name:friends", "to:addr:none",
            "received:mail.example.com", "received:com"} <= set(t)


def test_a_higher_parts_limit_reads_every_part_up_to_it() -> None:
    """The delimiter scan is bounded by the tokenizer's own `max_parts`, not the default:
    with a limit of 150, a word in the 120th part is read and nothing is reported unread
    (a limit above 100 used to stop splitting at 101 parts, with no `too many parts`)."""
    from dataclasses import replace

    from spambridge.bayes.tokenizer import DEFAULT_LIMITS

    parts = [f"--B\r\nContent-Type: text/plain\r\n\r\nfiller{i:03d}\r\n" for i in range(119)]
    parts.append("--B\r\nContent-Type: text/plain\r\n\r\nlastpartword\r\n--B--\r\n")
    msg = ("Subject: many\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; "
           "boundary=B\r\n\r\n" + "".join(parts)).encode()
    limits = replace(DEFAULT_LIMITS, max_parts=150)
    toks = tokenize(msg, limits)
    assert "lastpartword" in toks and not unread(toks)
    assert "lastpartword" not in tokenize(msg)  # the default's 100 parts stop before it
