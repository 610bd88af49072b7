"""Reports: a support week as its lead reads it.

On Monday 2 March 2026 (UTC; no business hours set, so SLA clocks run around the clock, with
the default policies: email 4 h, everything else 15 min) Support gets two chats and an email;
Billing gets one message Support may not see."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from channels_adapters.webchat.chat import conversation_rate
from conversations import services
from tests.conftest import receive

MONDAY = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def at(minutes: float):
    return time_machine.travel(MONDAY + timedelta(minutes=minutes), tick=False)


@pytest.fixture
def week(bob, dana, charlie, chat_inbox, mail_inbox, billing_inbox):
    with at(0):
        quick = receive(chat_inbox, text="Where is order 1?", address="v-1").message.conversation
        slow = receive(chat_inbox, text="Hello?", address="v-2").message.conversation
        mail = receive(
            mail_inbox, text="Invoice 7?", address="eva@example.com"
        ).message.conversation
        receive(billing_inbox, text="Refund please", address="zed@example.com")
    with at(2):  # Bob answers the first chat in 2 minutes
        services.conversation_assign(conversation=quick, assignee=bob, actor=bob)
        services.reply_send(conversation=quick, author=bob, text="On its way")
    with at(10):
        services.conversation_set_status(conversation=quick, status="resolved", actor=bob)
        conversation_rate(quick, rating=5)
    with at(30):  # Dana answers the email in 30 minutes, the second chat after 40
        services.conversation_assign(conversation=mail, assignee=dana, actor=dana)
        services.reply_send(conversation=mail, author=dana, text="Attached")
    with at(40):
        services.conversation_assign(conversation=slow, assignee=dana, actor=dana)
        services.reply_send(conversation=slow, author=dana, text="Sorry for the wait")
    with at(120):
        services.conversation_set_status(conversation=mail, status="resolved", actor=dana)
        services.conversation_set_status(conversation=slow, status="resolved", actor=dana)
        conversation_rate(slow, rating=2)


def figures(page: str) -> dict[str, str]:
    import re

    return dict(re.findall(r'data-figure="([\w-]+)">([^<]*)<', page))


def test_a_lead_sees_the_weeks_volume_times_slas_and_ratings(client, bob, week):
    client.force_login(bob)
    with at(24 * 60):
        page = client.get("/inbox/reports?days=7").content.decode()
    assert figures(page) == {
        "opened": "3",  # Billing's conversation is not Support's to see
        "resolved": "3",
        "waiting": "0",
        "unanswered": "0",
        "first-response": "30 min",  # 2, 30 and 40 minutes
        "resolution": "2 h",  # 10, 120 and 120 minutes
        "rating": "3.5 / 5",
    }
    assert "50% satisfied, 2 rated" in page
    # First responses: the quick chat met its 15 minutes, the slow one did not, the email met
    # its 4 hours.
    assert '<th scope="row">First response</th><td>2</td><td>1</td><td>67%</td>' in page
    rows = page.split("<h2>By agent</h2>")[1]
    assert rows.index("Dana") < rows.index("Bob")  # most resolved first
    assert '<th scope="row">Dana</th><td>2</td><td>2 h</td><td>35 min</td><td>2.0 (1)</td>' in rows
    assert '<th scope="row">Bob</th><td>1</td><td>10 min</td><td>2 min</td><td>5.0 (1)</td>' in rows


def test_conversations_resolved_without_an_assignee_have_their_row(client, bob, week, chat_inbox):
    with at(60):
        spam = receive(chat_inbox, text="Buy now", address="v-9").message.conversation
        services.conversation_set_status(conversation=spam, status="resolved", actor=bob)
    client.force_login(bob)
    with at(24 * 60):
        page = client.get("/inbox/reports?days=7").content.decode()
    assert figures(page)["resolved"] == "4"
    rows = page.split("<h2>By agent</h2>")[1]
    # The rows add up to the four resolved: Dana 2, Bob 1, and one nobody held, last.
    assert rows.index("Bob") < rows.index("Unassigned")
    assert '<th scope="row">Unassigned</th><td>1</td><td>0 s</td>' in rows


def test_the_period_and_team_narrow_it_and_bad_input_falls_back(client, alice, week, billing):
    client.force_login(alice)
    with at(24 * 60):
        everyone = figures(client.get("/inbox/reports").content.decode())
        billing_only = figures(client.get(f"/inbox/reports?team={billing.pk}").content.decode())
        nonsense = client.get("/inbox/reports?days=-1&team=x' OR 1=1")
    assert everyone["opened"] == "4"  # an admin sees every team
    assert billing_only["opened"] == "1" and billing_only["unanswered"] == "1"
    assert nonsense.status_code == 200 and figures(nonsense.content.decode())["opened"] == "4"
    with at(9 * 24 * 60):  # the week has passed
        later = figures(client.get("/inbox/reports?days=7").content.decode())
        month = figures(client.get("/inbox/reports?days=30").content.decode())
    assert later["opened"] == "0" and later["first-response"] == "–"
    assert month["opened"] == "4"


def test_the_page_costs_the_same_queries_however_busy_the_team(client, bob, chat_inbox, week):
    client.force_login(bob)

    def queries():
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/inbox/reports").status_code == 200
        return len(captured)

    with at(24 * 60):
        before = queries()
        for n in range(20):
            receive(chat_inbox, text="More", address=f"more-{n}")
        assert queries() == before


def test_agent_names_are_escaped(client, bob, week):
    bob.display_name = "<script>alert(1)</script>"
    bob.save()
    client.force_login(bob)
    with at(24 * 60):
        page = client.get("/inbox/reports").content.decode()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
