"""The Wyoming conversation agent: a `transcript` goes through the chat pipeline as the box's
voice user, and the answer comes back as the protocol's streamed `handled` events.

Home Assistant (its `wyoming` integration) sends one `transcript` per turn, with the pipeline's
language and `context.conversation_id`, and reads until `handled`, `not-handled` or `error`;
it does not read the streaming events. The protocol's streaming form serves both kinds of
client: `handled-start`, a `handled-chunk` per sentence as the model writes it, the whole
`handled` (what older clients wait for), then `handled-stop`.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from wyoming.event import Event
from wyoming.handle import Handled, HandledChunk, HandledStart, HandledStop, NotHandled
from wyoming.info import Attribution, HandleModel, HandleProgram

from mongars_edge import __version__
from mongars_edge.chat.lang import LANGS, Lang, detect
from mongars_edge.chat.pipeline import Turn
from mongars_edge.chat.prompts import spoken_prompt
from mongars_edge.errors import MongarsError, UnavailableError
from mongars_edge.inference.engine import Message, Sampling, TokenEvent
from mongars_edge.inference.errors import DeadlineExceededError, PromptTooLongError, QueueFullError
from mongars_edge.memory.accounts import UserExistsError
from mongars_edge.speech.sentences import SentenceSplitter

if TYPE_CHECKING:
    from mongars_edge.chat.pipeline import ChatPipeline

log = logging.getLogger(__name__)

#: The account voice turns belong to: its conversations and memories are its own.
VOICE_USER: Final = "voice"
#: How Home Assistant's conversation ids are told apart from other programs' in the store.
LINK_SOURCE: Final = "wyoming"
MAX_CONVERSATION_ID: Final = 200
_DEFAULT_LANG: Final[Lang] = "fr"  # as the chat pipeline: the home language of the box

Send = Callable[[Event], Awaitable[None]]

# What a listener hears when the box cannot answer: short, in the turn's language, no detail
# (that goes to the log).
_SAY: Final[dict[str, dict[Lang, str]]] = {
    "empty": {
        "fr": "Je n'ai rien entendu à répondre.",
        "en": "I did not hear anything to answer.",
    },
    "bad_request": {
        "fr": "Je n'ai pas compris la demande de l'assistant vocal.",
        "en": "I did not understand the voice assistant's request.",
    },
    "no_model": {
        "fr": "Aucun modèle de conversation n'est chargé sur la boîte en ce moment.",
        "en": "No chat model is loaded on the box right now.",
    },
    "busy": {
        "fr": "La boîte est occupée; réessaie dans un instant.",
        "en": "The box is busy; try again in a moment.",
    },
    "too_long": {
        "fr": "C'est trop long pour moi; essaie une demande plus courte.",
        "en": "That is too long for me; try a shorter request.",
    },
    "failed": {
        "fr": "Désolé, je n'ai pas pu répondre.",
        "en": "Sorry, I could not answer that.",
    },
    "no_voice_user": {
        "fr": "Le compte vocal de la boîte n'est pas utilisable; son journal dit pourquoi.",
        "en": "The box's voice account cannot be used; its log says why.",
    },
    "off": {
        "fr": "La conversation est désactivée sur cette boîte.",
        "en": "Conversation is turned off on this box.",
    },
}


def language_hint(language: object) -> Lang | None:
    """fr or en from a Wyoming language tag (fr, fr-CA, en_US); None for any other."""
    if not isinstance(language, str):
        return None
    primary = language.replace("_", "-").split("-")[0].strip().lower()
    return next((lang for lang in LANGS if lang == primary), None)


def reply_language(text: str, hint: Lang | None) -> Lang:
    """The chat pipeline's rule: what the words say, else the declared language, else French."""
    return detect(text).lang or hint or _DEFAULT_LANG


def not_handled(reason: str, lang: Lang, context: Mapping[str, Any] | None = None) -> Event:
    return NotHandled(text=_SAY[reason][lang], context=dict(context or {})).event()


def not_handled_off(event: Event) -> Event:
    """The answer to a transcript on a server whose agent is off."""
    text = event.data.get("text")
    hint = language_hint(event.data.get("language"))
    return not_handled("off", reply_language(text if isinstance(text, str) else "", hint))


class VoiceUserError(UnavailableError):
    """The account named `voice` is a person's (it can sign in): the agent will not be them."""

    kind = "voice_user_unusable"


def _reason(exc: MongarsError) -> str:
    if isinstance(exc, VoiceUserError):
        return "no_voice_user"
    if isinstance(exc, UnavailableError):
        return "no_model"
    if isinstance(exc, QueueFullError | DeadlineExceededError):
        return "busy"
    if isinstance(exc, PromptTooLongError):
        return "too_long"
    return "failed"


class _BadRequest(ValueError):
    """A transcript whose context cannot be used."""


def _conversation_key(context: object) -> str:
    """The client's conversation id (Home Assistant's ULID), or a new one to hand back."""
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise _BadRequest("transcript context must be an object")
    value = context.get("conversation_id")
    if value is None:
        return uuid.uuid4().hex
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_CONVERSATION_ID:
        raise _BadRequest(f"conversation_id must be text of 1 to {MAX_CONVERSATION_ID} characters")
    return value


class VoiceAgent:
    """Answers Wyoming transcripts with the chat pipeline, as the box's voice user."""

    def __init__(self, chat: ChatPipeline, *, max_tokens: int) -> None:
        self._chat = chat
        self._max_tokens = max_tokens

    def program(self, attribution: Attribution) -> HandleProgram:
        """The `handle` program `describe` lists."""
        model = HandleModel(
            name="mongars-chat",
            attribution=attribution,
            installed=True,
            description="The box's chat model, with the voice user's memory",
            version=__version__,
            languages=list(LANGS),
        )
        return HandleProgram(
            name="monGARS",
            attribution=attribution,
            installed=True,
            description="monGARS Edge: the private assistant on this box",
            version=__version__,
            models=[model],
            supports_handled_streaming=True,
        )

    async def voice_user(self) -> int:
        """The voice user's id, the account made on first use (no password: it cannot sign in).

        Anyone who reaches the Wyoming port talks as this user and hears what it remembers:
        an account someone can sign in as (made by hand with that name) is refused.
        """
        store = self._chat.store
        user = await store.get_user_by_name(VOICE_USER)
        if user is None:
            with contextlib.suppress(UserExistsError):
                await store.create_user(VOICE_USER, None, is_admin=False)
            user = await store.require_user(VOICE_USER)
        if user.password_hash is not None or user.is_admin:
            raise VoiceUserError(
                f"the user {user.name!r} can sign in (a password or admin rights), so the "
                "voice agent does not answer as them: remove that user (DELETE "
                "/api/users/ID) and the agent makes its own"
            )
        return user.id

    async def handle(self, event: Event, send: Send) -> None:
        """Answer one `transcript` event; failures are `not-handled`, never a dropped line."""
        text = event.data.get("text")
        hint = language_hint(event.data.get("language"))
        if not isinstance(text, str) or not text.strip():
            await send(not_handled("empty", hint or _DEFAULT_LANG))
            return
        text = text.strip()
        lang = reply_language(text, hint)
        try:
            key = _conversation_key(event.data.get("context"))
        except _BadRequest as exc:
            log.info("voice turn refused: %s", exc)
            await send(not_handled("bad_request", lang))
            return
        context = {"conversation_id": key}
        try:
            events, first, lang = await self._start(text, hint, lang, key)
        except MongarsError as exc:
            level = logging.WARNING if isinstance(exc, VoiceUserError) else logging.INFO
            log.log(level, "voice turn not handled (%s): %s", exc.kind, exc)
            await send(not_handled(_reason(exc), lang, context))
            return
        context["language"] = lang
        async with contextlib.aclosing(events):
            await self._answer(first, events, lang, context, send)

    async def _start(
        self, text: str, hint: Lang | None, lang: Lang, key: str
    ) -> tuple[AsyncGenerator[TokenEvent, None], TokenEvent, Lang]:
        """Prepare the turn and wait for its first token, so that a full queue or a missing
        model is still a clean `not-handled` rather than a broken stream."""
        chat = self._chat
        user_id = await self.voice_user()
        # The conversation is made by `prepare` (once the turn can run) and linked after it:
        # a turn refused up front leaves nothing behind.
        known = await chat.store.conversation_link(user_id, LINK_SOURCE, key)
        turn = Turn(
            messages=(Message("system", spoken_prompt(lang)), Message("user", text)),
            sampling=Sampling(max_tokens=self._max_tokens),
            sampling_set=frozenset({"max_tokens"}),
            conversation_id=known,
            new_conversation=known is None,
            preferred_lang=hint,
        )
        prepared = await chat.prepare(turn, user_id)
        if known is None and prepared.conversation_id is not None:
            await chat.store.link_conversation(user_id, LINK_SOURCE, key, prepared.conversation_id)
        events = chat.stream(prepared)
        try:
            first = await anext(events)
        except BaseException:
            await events.aclose()
            raise
        return events, first, prepared.lang

    async def _answer(
        self,
        first: TokenEvent,
        events: AsyncGenerator[TokenEvent, None],
        lang: Lang,
        context: dict[str, Any],
        send: Send,
    ) -> None:
        await send(HandledStart(context=context).event())
        splitter = SentenceSplitter()
        parts: list[str] = []
        chunks = 0
        final: TokenEvent | None = None

        async def say(pieces: list[str]) -> None:
            nonlocal chunks
            for piece in pieces:
                # Concatenated, the chunks are the reply (with its whitespace normalised).
                await send(HandledChunk(text=piece if not chunks else " " + piece).event())
                chunks += 1

        try:
            event: TokenEvent | None = first
            while event is not None:
                parts.append(event.text)
                await say(splitter.feed(event.text))
                if event.finish_reason is not None:
                    final = event
                    break
                event = await anext(events, None)
            await say(splitter.flush())
        except MongarsError as exc:  # the engine gave up mid-reply (deadline, peer lost)
            log.info("voice reply cut short (%s): %s", exc.kind, exc)
        if final is None or final.finish_reason == "error":
            await send(not_handled("failed", lang, context))
        else:
            await send(Handled(text="".join(parts).strip(), context=context).event())
        await send(HandledStop().event())
