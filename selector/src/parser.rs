//! Recursive-descent parser for the selector grammar, with byte positions in errors.

use crate::{MAX_SELECTOR_LEN, Selector};

/// Why a selector does not parse, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector error at byte {position}: {message}")]
pub struct ParseError {
    /// Byte offset of the problem in the selector text.
    pub position: usize,
    /// What is wrong.
    pub message: String,
}

fn error(position: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        position,
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Literal(String),
    Eq,
    NotEq,
    Not,
    And,
    Or,
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, ParseError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        let two = text.get(at..at + 2);
        let token = match c {
            _ if c.is_whitespace() => {
                chars.next();
                continue;
            }
            '(' => Token::LParen,
            ')' => Token::RParen,
            '{' => Token::LBrace,
            '}' => Token::RBrace,
            ',' => Token::Comma,
            '=' if two == Some("==") => Token::Eq,
            '!' if two == Some("!=") => Token::NotEq,
            '!' => Token::Not,
            '&' if two == Some("&&") => Token::And,
            '|' if two == Some("||") => Token::Or,
            '\'' | '"' => {
                chars.next();
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, q)) if q == c => break,
                        Some((_, ch)) => value.push(ch),
                        None => return Err(error(at, "unterminated string literal")),
                    }
                }
                tokens.push((at, Token::Literal(value)));
                continue;
            }
            _ if is_ident_char(c) => {
                let mut ident = String::new();
                while let Some(&(_, ch)) = chars.peek() {
                    if !is_ident_char(ch) {
                        break;
                    }
                    ident.push(ch);
                    chars.next();
                }
                tokens.push((at, Token::Ident(ident)));
                continue;
            }
            _ => return Err(error(at, format!("unexpected character {c:?}"))),
        };
        let width = if matches!(token, Token::Eq | Token::NotEq | Token::And | Token::Or) {
            2
        } else {
            1
        };
        for _ in 0..width {
            chars.next();
        }
        tokens.push((at, token));
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    next: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(_, t)| t)
    }

    fn position(&self) -> usize {
        self.tokens.get(self.next).map_or(self.end, |(at, _)| *at)
    }

    fn bump(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.next).map(|(_, t)| t.clone());
        self.next += 1;
        token
    }

    fn expect(&mut self, want: &Token, what: &str) -> Result<(), ParseError> {
        let at = self.position();
        match self.bump() {
            Some(ref got) if got == want => Ok(()),
            Some(got) => Err(error(at, format!("expected {what}, found {got:?}"))),
            None => Err(error(at, format!("expected {what}, found end of selector"))),
        }
    }

    fn or(&mut self) -> Result<Selector, ParseError> {
        let mut parts = vec![self.and()?];
        while self.peek() == Some(&Token::Or) {
            self.bump();
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Selector::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Selector, ParseError> {
        let mut parts = vec![self.unary()?];
        while self.peek() == Some(&Token::And) {
            self.bump();
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Selector::And(parts)
        })
    }

    fn unary(&mut self) -> Result<Selector, ParseError> {
        if self.peek() == Some(&Token::Not) {
            self.bump();
            return Ok(Selector::Not(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn literal(&mut self) -> Result<String, ParseError> {
        let at = self.position();
        match self.bump() {
            Some(Token::Literal(value)) => Ok(value),
            Some(got) => Err(error(at, format!("expected a quoted value, found {got:?}"))),
            None => Err(error(at, "expected a quoted value, found end of selector")),
        }
    }

    fn values(&mut self) -> Result<Vec<String>, ParseError> {
        self.expect(&Token::LBrace, "'{'")?;
        let mut values = Vec::new();
        if self.peek() == Some(&Token::RBrace) {
            self.bump();
            return Ok(values);
        }
        loop {
            values.push(self.literal()?);
            let at = self.position();
            match self.bump() {
                Some(Token::Comma) => {}
                Some(Token::RBrace) => return Ok(values),
                _ => return Err(error(at, "expected ',' or '}' in value set")),
            }
        }
    }

    fn primary(&mut self) -> Result<Selector, ParseError> {
        let at = self.position();
        match self.bump() {
            Some(Token::LParen) => {
                let inner = self.or()?;
                self.expect(&Token::RParen, "')'")?;
                Ok(inner)
            }
            Some(Token::Ident(name)) if name == "all" && self.peek() == Some(&Token::LParen) => {
                self.bump();
                self.expect(&Token::RParen, "')' after all(")?;
                Ok(Selector::All)
            }
            Some(Token::Ident(name)) if name == "has" && self.peek() == Some(&Token::LParen) => {
                self.bump();
                let key_at = self.position();
                let key = match self.bump() {
                    Some(Token::Ident(key)) => key,
                    _ => return Err(error(key_at, "expected a label key inside has()")),
                };
                self.expect(&Token::RParen, "')' after has(key")?;
                Ok(Selector::Has(key))
            }
            Some(Token::Ident(key)) => {
                let op_at = self.position();
                match self.bump() {
                    Some(Token::Eq) => Ok(Selector::Equals(key, self.literal()?)),
                    Some(Token::NotEq) => Ok(Selector::NotEquals(key, self.literal()?)),
                    Some(Token::Ident(word)) if word == "in" => Ok(Selector::In(key, self.values()?)),
                    Some(Token::Ident(word)) if word == "not" => {
                        let in_at = self.position();
                        match self.bump() {
                            Some(Token::Ident(word)) if word == "in" => {
                                Ok(Selector::NotIn(key, self.values()?))
                            }
                            _ => Err(error(in_at, "expected 'in' after 'not'")),
                        }
                    }
                    _ => Err(error(
                        op_at,
                        format!("expected ==, !=, in or not in after label key {key:?}"),
                    )),
                }
            }
            Some(token) => Err(error(at, format!("unexpected {token:?}"))),
            None => Err(error(at, "unexpected end of selector")),
        }
    }
}

/// Parses a selector.
pub(crate) fn parse(text: &str) -> Result<Selector, ParseError> {
    if text.len() > MAX_SELECTOR_LEN {
        return Err(error(
            MAX_SELECTOR_LEN,
            format!(
                "selector is {} bytes long; at most {MAX_SELECTOR_LEN}",
                text.len()
            ),
        ));
    }
    let tokens = tokenize(text)?;
    if tokens.is_empty() {
        return Ok(Selector::All);
    }
    let mut parser = Parser {
        tokens,
        next: 0,
        end: text.len(),
    };
    let selector = parser.or()?;
    if parser.next < parser.tokens.len() {
        return Err(error(
            parser.position(),
            "unexpected text after a complete selector",
        ));
    }
    Ok(selector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_point_at_the_problem() {
        let cases = [
            ("app = 'x'", 4),
            ("app == x", 7),
            ("app == 'x' &&", 13),
            ("(app == 'x'", 11),
            ("has(app", 7),
            ("app in {'a' 'b'}", 12),
            ("app == 'x' )", 11),
            ("app == 'unterminated", 7),
            ("app not 'x'", 8),
        ];
        for (text, position) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.position, position, "{text}: {err}");
        }
        assert!(parse(&"a".repeat(MAX_SELECTOR_LEN + 1)).is_err());
    }
}
