from tests.conftest import receive, signed_in_http


def test_a_signed_in_agent_reads_the_inbox_while_redis_is_down(
    server_without_redis, client, bob, api_inbox
):
    conversation = receive(api_inbox, text="Where is my order?").message.conversation
    agent = signed_in_http(client, bob, server_without_redis)

    # The session is read from the database behind the cache: the conversations are all there.
    page = agent.get(f"/inbox/{conversation.number}/")

    assert page.status_code == 200
    assert "Where is my order?" in page.text
    assert agent.get("/inbox/").status_code == 200
