//! Loading templates from names, `.jinja` files and `tokenizer_config.json` files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use temper_chat::{ChatTemplate, Conversation, Error, Message, RenderOptions};

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(name)
        .display()
        .to_string()
}

fn hello() -> Conversation {
    Conversation::new(vec![Message::user("Hi"), Message::assistant("Hello")])
}

#[test]
fn a_string_chat_template_and_its_special_tokens_load() {
    let template = ChatTemplate::load(&fixture("tokenizer_config_string.json")).unwrap();
    assert_eq!(template.bos_token(), Some("<s>"));
    assert_eq!(template.eos_token(), Some("</s>"));
    let text = template
        .render_text(&hello(), &RenderOptions::default())
        .unwrap();
    assert!(
        text.starts_with("<s><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"),
        "{text}"
    );
}

#[test]
fn a_list_of_named_templates_loads_default_or_by_name() {
    let default = ChatTemplate::load(&fixture("tokenizer_config_list.json")).unwrap();
    assert_eq!(
        default.bos_token(),
        Some("<s>"),
        "AddedToken objects give their content"
    );
    assert!(
        default
            .render_text(&hello(), &RenderOptions::default())
            .unwrap()
            .starts_with("<|im_start|>user")
    );
    let tool_use = ChatTemplate::load(&format!(
        "{}#tool_use",
        fixture("tokenizer_config_list.json")
    ))
    .unwrap();
    let text = tool_use
        .render_text(&hello(), &RenderOptions::default())
        .unwrap();
    assert!(
        text.starts_with("<|im_start|>system\nYou are Qwen"),
        "{text}"
    );
}

#[test]
fn a_missing_named_template_lists_the_names_there_are() {
    let error =
        ChatTemplate::load(&format!("{}#nope", fixture("tokenizer_config_list.json"))).unwrap_err();
    assert!(matches!(error, Error::TokenizerConfig { .. }));
    assert!(
        error
            .to_string()
            .ends_with("no chat template named `nope`; it has: default, tool_use"),
        "{error}"
    );
}

#[test]
fn a_jinja_file_loads_and_a_syntax_error_names_the_line() {
    let template = ChatTemplate::load(&format!("{}/templates/qwen2_5.jinja", fixture(""))).unwrap();
    assert!(!template.has_generation_blocks());
    let training =
        ChatTemplate::load(&format!("{}/templates/qwen2_5_training.jinja", fixture(""))).unwrap();
    assert!(training.has_generation_blocks());

    let error = ChatTemplate::from_source(
        "broken",
        "line one\n{% for m in messages %}{{ m.content }\n",
    )
    .unwrap_err();
    assert!(matches!(error, Error::Syntax { .. }));
    assert!(error.to_string().contains("(template line 2)"), "{error}");
}

#[test]
fn unknown_names_list_the_built_ins() {
    let error = ChatTemplate::load("vicuna").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("alpaca, chatml, llama3, zephyr, mistral, gemma, gemma3, phi3"),
        "{error}"
    );
}
