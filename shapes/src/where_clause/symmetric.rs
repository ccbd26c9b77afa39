//! `BETWEEN SYMMETRIC`, which sqlparser does not parse: a token rewrite before parsing and
//! its reading back in the binder.

use sqlparser::ast;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, TokenWithSpan, Word};

/// The function name that marks the lower bound of a `BETWEEN SYMMETRIC` (a quoted name
/// with a space, so no other construct produces it by accident).
const SYMMETRIC_MARK: &str = "between symmetric";

/// sqlparser does not parse `BETWEEN [A]SYMMETRIC`. Rewrite the tokens
/// `BETWEEN SYMMETRIC low AND` to `BETWEEN "between symmetric"(low) AND`, which it parses;
/// the binder reads the mark back. As in PostgreSQL's grammar, `low` ends at the first
/// `AND` outside brackets.
pub(super) fn mark_symmetric_between(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let keyword =
        |t: &TokenWithSpan, k: Keyword| matches!(&t.token, Token::Word(w) if w.keyword == k && w.quote_style.is_none());
    let mut out = Vec::with_capacity(tokens.len() + 3);
    let mut it = tokens.into_iter().peekable();
    while let Some(t) = it.next() {
        let is_between = keyword(&t, Keyword::BETWEEN);
        out.push(t);
        if !is_between {
            continue;
        }
        while it.peek().is_some_and(|t| matches!(t.token, Token::Whitespace(_))) {
            out.push(it.next().unwrap_or_else(|| TokenWithSpan::wrap(Token::EOF)));
        }
        let Some(next) = it.peek() else { break };
        if keyword(next, Keyword::ASYMMETRIC) {
            it.next(); // the default
        } else if keyword(next, Keyword::SYMMETRIC) {
            it.next();
            out.push(TokenWithSpan::wrap(Token::Word(Word {
                value: SYMMETRIC_MARK.into(),
                quote_style: Some('"'),
                keyword: Keyword::NoKeyword,
            })));
            out.push(TokenWithSpan::wrap(Token::LParen));
            let mut depth = 0usize;
            while let Some(t) = it.peek() {
                match &t.token {
                    Token::LParen | Token::LBracket => depth += 1,
                    Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
                    _ if depth == 0 && keyword(t, Keyword::AND) => break,
                    _ => {}
                }
                out.push(it.next().unwrap_or_else(|| TokenWithSpan::wrap(Token::EOF)));
            }
            out.push(TokenWithSpan::wrap(Token::RParen));
        }
    }
    out
}

/// The bound inside a [`SYMMETRIC_MARK`] call, if `e` is one.
pub(super) fn symmetric_bound(e: &ast::Expr) -> Option<&ast::Expr> {
    let ast::Expr::Function(f) = e else { return None };
    let [part] = f.name.0.as_slice() else { return None };
    let ident = part.as_ident()?;
    if ident.value != SYMMETRIC_MARK || ident.quote_style != Some('"') {
        return None;
    }
    match &f.args {
        ast::FunctionArguments::List(list) => match list.args.as_slice() {
            [ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(inner))] => Some(inner),
            _ => None,
        },
        _ => None,
    }
}
