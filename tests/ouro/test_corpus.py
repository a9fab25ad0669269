"""The English chatterbot-corpus, read from the installed package."""

from ouro.corpus import load_chatterbot_conversations


def test_conversations_alternate_user_and_assistant_turns():
    conversations = load_chatterbot_conversations()
    assert len(conversations) > 1500
    for conversation in conversations:
        assert len(conversation) >= 2 and len(conversation) % 2 == 0
        roles = [message["role"] for message in conversation]
        assert roles == ["user", "assistant"] * (len(conversation) // 2)
        assert all(isinstance(m["content"], str) and m["content"] for m in conversation)


def test_known_exchange_is_present_and_order_is_stable():
    conversations = load_chatterbot_conversations()
    assert [
        {"role": "user", "content": "What is AI?"},
        {
            "role": "assistant",
            "content": "Artificial Intelligence is the branch of engineering and science "
            "devoted to constructing machines that think.",
        },
    ] in conversations
    assert conversations == load_chatterbot_conversations()
