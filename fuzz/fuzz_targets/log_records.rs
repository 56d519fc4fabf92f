//! Any bytes as a record read from the log: an event, a command or an outcome document,
//! decoded through the upcasters into every message family. Nothing may panic, and an
//! event or command that decodes encodes to a document that decodes again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use schemas::emails::{EmailCommand, EmailEvent};
use schemas::notifications::{NotificationCommand, NotificationEvent};
use schemas::orders::{OrderCommand, OrderEvent};
use schemas::payments::{PaymentCommand, PaymentEvent};
use schemas::users::{UserCommand, UserEvent};
use schemas::{CommandDocument, EventDocument, MessageFamily, OutcomeDocument};

fn event<E: MessageFamily>(document: &EventDocument) {
    if let Ok(event) = document.clone().decode::<E>() {
        let again = EventDocument::from_json(&event.to_document().to_json())
            .expect("an encoded event decodes");
        again
            .decode::<E>()
            .expect("an encoded event decodes into its family");
    }
}

fn command<C: MessageFamily>(document: &CommandDocument) {
    if let Ok(command) = document.clone().decode::<C>() {
        let again = CommandDocument::from_json(&command.to_document().to_json())
            .expect("an encoded command decodes");
        again
            .decode::<C>()
            .expect("an encoded command decodes into its family");
    }
}

fuzz_target!(|bytes: &[u8]| {
    if let Ok(document) = EventDocument::from_json(bytes) {
        event::<UserEvent>(&document);
        event::<EmailEvent>(&document);
        event::<OrderEvent>(&document);
        event::<PaymentEvent>(&document);
        event::<NotificationEvent>(&document);
    }
    if let Ok(document) = CommandDocument::from_json(bytes) {
        command::<UserCommand>(&document);
        command::<EmailCommand>(&document);
        command::<OrderCommand>(&document);
        command::<PaymentCommand>(&document);
        command::<NotificationCommand>(&document);
    }
    let _ = OutcomeDocument::from_json(bytes);
});
